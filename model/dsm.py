"""Dual semantic mapping (DSM) loss.

text term:  mean over real question tokens of 1 - cos(T_q, T_qr)   (LLM question embeddings vs the question
            rebuilt from the ViT through the mm projector)
image term: mean over patches of image samples of 1 - cos(V_i, V_ir)  (ViT patch embeddings vs patches rebuilt from
            the LLM-space image tokens through the aux projector)

Neither side is detached: both targets receive gradients. Masked entries are excluded from the means, never
averaged in as blanks; a term with no valid entry is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DsmTerms:
    text: torch.Tensor
    image: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.text + self.image


def masked_cosine_distance(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(a, b) over the last dim at positions where `mask` is true (zero when none is)."""
    distance = 1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1)
    weights = mask.to(distance.dtype).expand_as(distance)
    count = weights.sum()
    return (distance * weights).sum() / count.clamp(min=1.0)


def dual_semantic_mapping_loss(
    question_embeddings: torch.Tensor,
    rebuilt_question: torch.Tensor,
    question_mask: torch.Tensor,
    patch_embeddings: torch.Tensor,
    rebuilt_patches: torch.Tensor,
    image_present: torch.Tensor,
) -> DsmTerms:
    """question_* (N, Lt, D) with mask (N, Lt); patch_* (N, P, C) with image_present (N,) selecting real images."""
    text = masked_cosine_distance(question_embeddings, rebuilt_question, question_mask)
    image = masked_cosine_distance(patch_embeddings, rebuilt_patches, image_present[:, None])
    return DsmTerms(text=text, image=image)
