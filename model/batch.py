"""The explicit batch contract between sequence building (collate) and the FUSION forward pass.

Rows fall into two groups, each kept in batch order:

* per-image tensors (NI rows) hold the samples that have an image: pixels, image slots, and the ViT text that
  guides their full view (`vit_text_*`);
* per-text-only tensors (NT = B - NI rows) hold the samples without one: only their ViT text
  (`text_only_vit_text_*`), built with the same policy and cap as an image sample's. It is read only for the DSM
  text term (training with dsm_weight > 0), where it passes through the ViT blocks alone; generation never
  encodes it.

Per latent block (NB rows, one per kept turn of an image sample, in batch order) come its positions, batch row,
question end and, with `card.question_guided_tiles`, the ViT text of that turn alone.

Text-only samples have no pixels, no image slots and no latent blocks. Each group is padded to its own longest
text, and padding is marked by the explicit masks only (never inferred from a token id). Without TUNE both ViT
texts are empty (width 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class FusionBatch:
    input_ids: torch.Tensor  # (B, L) token ids; image and latent slots hold the pad id and are overwritten
    attention_mask: torch.Tensor  # (B, L) 1 for real tokens, 0 for padding
    position_ids: torch.Tensor  # (B, L) RoPE positions, consistent with left or right padding
    labels: torch.Tensor | None  # (B, L) supervised token ids, -100 elsewhere; None for generation
    has_image: torch.Tensor  # (B,) bool
    pixel_values: torch.Tensor  # (NI, tiles + 1, 3, H, W): static_hd tiles row-major, then the full view
    image_positions: torch.Tensor  # (NI, G*G) sequence positions of the image tokens of each image sample
    image_grid: int  # G: side of the image-token grid in the sequence (native grid, or FUSION-L's)
    vit_text_ids: torch.Tensor  # (NI, Lt) question ids for the text-guided ViT pass of each image sample
    vit_text_mask: torch.Tensor  # (NI, Lt) bool: real question tokens (padding is never inferred from ids)
    text_only_vit_text_ids: torch.Tensor  # (NT, Lu) question ids of each text-only sample (DSM text term only)
    text_only_vit_text_mask: torch.Tensor  # (NT, Lu) bool: real question tokens of text-only samples
    latent_count: int  # Q for this batch (0 when CARD is off)
    latent_positions: torch.Tensor  # (NB, Q) sequence positions of every latent block in the batch
    latent_rows: torch.Tensor  # (NB,) batch row of each latent block
    question_end_positions: torch.Tensor  # (NB,) position of the question-end token each block belongs to
    # With card.question_guided_tiles: (NB, Lq) ids and bool mask of each block's own question, which guides the
    # tiles its latents read; (NB, 0) otherwise.
    latent_vit_text_ids: torch.Tensor
    latent_vit_text_mask: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_images(self) -> int:
        return self.pixel_values.shape[0]

    def map_tensors(self, function: Callable[[torch.Tensor], torch.Tensor]) -> FusionBatch:
        changes = {
            field.name: function(value)
            for field in dataclasses.fields(self)
            if isinstance(value := getattr(self, field.name), torch.Tensor)
        }
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str) -> FusionBatch:
        return self.map_tensors(lambda tensor: tensor.to(device))

    def pin_memory(self) -> FusionBatch:
        """Called by torch DataLoader(pin_memory=True) for custom batch types."""
        return self.map_tensors(torch.Tensor.pin_memory)

    def image_index_of_rows(self) -> torch.Tensor:
        """(B,) index into the per-image tensors for each row (-1 for text-only rows)."""
        index = torch.cumsum(self.has_image.long(), dim=0) - 1
        return torch.where(self.has_image, index, torch.full_like(index, -1))
