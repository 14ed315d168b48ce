"""Text-guided vision encoding (TUNE) around the stock SigLIP / SigLIP2 encoder blocks.

The patch embeddings are computed by the tower's own embedding module; projected question embeddings are appended
after them (without position embedding) and the stock `encoder.layers` are iterated with an explicit additive
attention mask per block:

* every block: padded text keys are masked (padding comes from an explicit mask, never from a token id);
* early blocks (`early_layers`, default half): vision queries may not attend to text keys, so early blocks learn
  purely visual features; text queries still see the image.

`encode_text` runs text alone through the same blocks (the DSM text term of text-only samples): with no patches
there are no vision queries, so early and late blocks share the padding mask.

The multi-level connector input is concat(h_N, mean(h_0..h_{E-1}), mean(h_E..h_{N-1})) where h_0 is the block input,
h_k the output of block k, N the number of kept blocks and E the early count. (The released SigLIP2 code skipped
h_{N-1} in the late mean; here the late half is every block input from E to N-1.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Siglip2VisionModel

from model.backbones import VisionTower


@dataclass
class VisionEncoding:
    features: torch.Tensor  # (N, P + Lt, C_out): connector input for patch positions then text positions
    patch_embeddings: torch.Tensor  # (N, P, C): h_0 at the patch positions (the DSM image target)


def vision_text_attention_masks(
    num_patches: int, text_mask: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive masks (N, 1, P+Lt, P+Lt) for late blocks (padding only) and early blocks (padding + vision->text).

    With patches, every query row keeps at least the P patch keys, so no row is fully masked. With num_patches = 0
    both masks are the padding mask, and a row keeps a key only if it has a real text token (see `encode_text`).
    """
    batch, text_length = text_mask.shape
    blocked = torch.finfo(dtype).min
    key_is_valid = torch.cat(
        [torch.ones(batch, num_patches, dtype=torch.bool, device=text_mask.device), text_mask.bool()], dim=1
    )
    length = num_patches + text_length
    late = torch.zeros(batch, 1, length, length, dtype=dtype, device=text_mask.device)
    late.masked_fill_(~key_is_valid[:, None, None, :], blocked)
    early = late.clone()
    early[:, :, :num_patches, num_patches:] = blocked
    return late, early


class TextGuidedVisionEncoder(nn.Module):
    def __init__(self, tower: VisionTower, early_layers: int | None, multi_level: bool) -> None:
        super().__init__()
        self.tower = tower
        num_layers = len(tower.encoder.layers)
        self.early_layers = num_layers // 2 if early_layers is None else early_layers
        if not 0 < self.early_layers < num_layers:
            raise ValueError(
                f"tune.early_layers={self.early_layers} must leave at least one early and one late block "
                f"of the {num_layers} kept vision blocks"
            )
        self.multi_level = multi_level
        self.patch_size: int = tower.config.patch_size

    @property
    def hidden_size(self) -> int:
        return self.tower.config.hidden_size

    @property
    def output_size(self) -> int:
        """Channel width of the connector input: 3C with the multi-level connector, C without."""
        return self.hidden_size * (3 if self.multi_level else 1)

    @property
    def num_layers(self) -> int:
        return len(self.tower.encoder.layers)

    def embed_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch embeddings plus learned position embeddings, (N, P, C), from (N, 3, H, W) pixels."""
        embeddings = self.tower.embeddings
        if isinstance(self.tower, Siglip2VisionModel):
            # NaFlex towers take pre-cut patches (channels last inside a patch) and the patch grid shape.
            n, channels, height, width = pixel_values.shape
            p = self.patch_size
            patches = pixel_values.reshape(n, channels, height // p, p, width // p, p)
            patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(n, (height // p) * (width // p), p * p * channels)
            spatial_shapes = torch.tensor([[height // p, width // p]] * n, device=pixel_values.device)
            return embeddings(patches, spatial_shapes)
        return embeddings(pixel_values)

    def forward(
        self,
        pixel_values: torch.Tensor,
        text_embeddings: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> VisionEncoding:
        """Encode (N, 3, H, W) views, optionally guided by (N, Lt, C) text embeddings with their (N, Lt) mask."""
        return self.encode_embedded(self.embed_patches(pixel_values), text_embeddings, text_mask)

    def encode_embedded(
        self,
        patches: torch.Tensor,
        text_embeddings: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> VisionEncoding:
        """`forward` from (N, P, C) patch embeddings (`embed_patches`): one view embedded once can be encoded beside
        several texts."""
        num_patches = patches.shape[1]
        hidden = patches
        late_mask = early_mask = None
        if text_embeddings is not None and text_embeddings.shape[1] > 0:
            if text_mask is None:
                raise ValueError("text_mask is required with text_embeddings (padding is never inferred from ids)")
            hidden = torch.cat([patches, text_embeddings.to(patches.dtype)], dim=1)
            late_mask, early_mask = vision_text_attention_masks(num_patches, text_mask, patches.dtype)
        return VisionEncoding(features=self._connector_input(hidden, early_mask, late_mask), patch_embeddings=patches)

    def encode_text(self, text_embeddings: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Connector input (N, Lt, C_out) for (N, Lt, C) text embeddings run through the blocks with no patches.

        Every row needs a real text token: without patches, a row of padding only would have no key to attend to.
        """
        rows_without_text = torch.nonzero(~text_mask.any(dim=1)).flatten().tolist()
        if rows_without_text:
            raise ValueError(f"text_mask rows {rows_without_text} have no real token: drop them before encode_text")
        dtype = self.tower.dtype
        padding_mask, _ = vision_text_attention_masks(0, text_mask, dtype)
        return self._connector_input(text_embeddings.to(dtype), padding_mask, padding_mask)

    def _connector_input(
        self, hidden: torch.Tensor, early_mask: torch.Tensor | None, late_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Run the kept blocks on `hidden` (h_0) and return the multi-level (or last-layer) connector input."""
        early_sum = late_sum = None
        for index, layer in enumerate(self.tower.encoder.layers):
            is_early = index < self.early_layers
            if self.multi_level:
                if is_early:
                    early_sum = hidden if early_sum is None else early_sum + hidden
                else:
                    late_sum = hidden if late_sum is None else late_sum + hidden
            hidden = layer(hidden, early_mask if is_early else late_mask)

        if not self.multi_level:
            return hidden
        early_mean = early_sum / self.early_layers
        late_mean = late_sum / (self.num_layers - self.early_layers)
        return torch.cat([hidden, early_mean, late_mean], dim=-1)
