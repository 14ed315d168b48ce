"""Dual semantic mapping (DSM) loss.

text term:  mean over the real question tokens of every sample of 1 - cos(T_q, T_qr)   (LLM question embeddings vs
            the question rebuilt from the ViT through the mm projector). Image samples rebuild their question in
            the text-guided pass beside their patches; text-only samples in a ViT pass of their question alone. The
            mean runs over the union of those tokens: every token weighs the same, whichever pass rebuilt it.
image term: mean over the patches of image samples of 1 - cos(V_i, V_ir)  (ViT patch embeddings vs patches rebuilt
            from the LLM-space image tokens through the aux projector). Text-only samples have no patches (they are
            never encoded as blank images), so they add nothing here.

Neither side is detached: both targets receive gradients. Masked entries are excluded from the means, never
averaged in as blanks; a term with no valid entry is zero.
"""

from __future__ import annotations

from collections.abc import Sequence
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


@dataclass
class Reconstruction:
    """Targets (N, L, W) and their reconstructions, compared entry by entry over the last dim."""

    target: torch.Tensor
    rebuilt: torch.Tensor
    mask: torch.Tensor | None = None  # (N, L) bool: entries that count; None counts every entry


def mean_cosine_distance(parts: Sequence[Reconstruction], device: torch.device) -> torch.Tensor:
    """Mean of 1 - cos over the counted entries of all parts together (zero on `device` when none counts).

    The parts may differ in N and L (separately padded groups); the mean is token-weighted over their union, not a
    mean of per-part means.
    """
    total = torch.zeros((), device=device)
    count = torch.zeros((), device=device)
    for part in parts:
        distance = 1.0 - F.cosine_similarity(part.target.float(), part.rebuilt.float(), dim=-1)
        if part.mask is None:
            total = total + distance.sum()
            count = count + distance.numel()
        else:
            total = total + torch.where(part.mask, distance, 0.0).sum()
            count = count + part.mask.sum()
    return total / count.clamp(min=1.0)


def dual_semantic_mapping_loss(
    questions: Sequence[Reconstruction], patches: Sequence[Reconstruction], device: torch.device
) -> DsmTerms:
    """questions: (N, Lt, D) LLM question embeddings vs rebuilt question, masked to real tokens, one part per ViT
    pass; patches: (NI, P, C) ViT patch embeddings vs rebuilt patches of image samples (empty without images)."""
    return DsmTerms(text=mean_cosine_distance(questions, device), image=mean_cosine_distance(patches, device))
