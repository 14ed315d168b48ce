"""Training FLOPs of a FUSION step from the architecture, in torchtitan's accounting, and the device's peak.

torchtitan counts 6 * N FLOPs per token for the dense weights (forward + backward) plus 12 * layers * width * seq
per token for attention, and reports achieved TFLOP/s and MFU = achieved / peak. FUSION has more than one
transformer, so each part is counted with the tokens it really processes in the batch: the LLM over the sequence
(the LM head only over supervised tokens, as the chunked loss computes it), the ViT over the text-guided full
views (patches + question tokens), the tiles (once per latent block, beside its question, with
`card.question_guided_tiles`) and the DSM text pass, the projectors over their inputs, and every
interaction layer over the latent tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from model.backbones import ConvStem, conv_multiply_adds
from model.batch import FusionBatch
from model.fusion import FusionModel

# Dense bf16 peak FLOP/s of common accelerators (no sparsity), by a substring of the device name.
GPU_PEAK_FLOPS = {
    "H200": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12,
    "A10": 125e12, "L40S": 362e12, "L4": 121e12, "V100": 125e12, "MI300X": 1307e12,
}


def _count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class FusionFlops:
    llm_dense: int  # decoder-layer parameters (no embeddings, no LM head)
    llm_layers: int
    llm_width: int
    lm_head: int
    vit_dense: int
    vit_layers: int
    vit_width: int
    patches: int
    tiles: int
    patch_embedding_macs: int  # multiply-adds of the patch embedding (linear or convolutional stem) per view
    mm_projector: int
    aux_projector: int
    interaction: int  # parameters of all interaction layers
    question_guided_tiles: bool = False  # tiles encoded once per latent block, beside its question
    text_guided: bool = True  # TUNE: the full view is encoded beside its question, so a tile differs from it

    @classmethod
    def of(cls, model: FusionModel) -> FusionFlops:
        llm = model.language_model
        text = llm.config.get_text_config()
        head = llm.get_output_embeddings()
        grid = model.native_image_grid
        return cls(
            llm_dense=_count(llm.model.layers), llm_layers=text.num_hidden_layers, llm_width=text.hidden_size,
            lm_head=head.weight.numel() if head is not None else 0,
            vit_dense=_count(model.vision.tower.encoder.layers), vit_layers=model.vision.num_layers,
            vit_width=model.vision.hidden_size, patches=grid * grid, tiles=model.config.image.tile_grid ** 2,
            patch_embedding_macs=_patch_embedding_macs(model.vision.tower.embeddings.patch_embedding,
                                                       model.config.image.image_size, grid * grid),
            mm_projector=_count(model.mm_projector), aux_projector=_count(model.aux_projector),
            interaction=_count(model.card),
            question_guided_tiles=model.config.guides_tiles_by_question, text_guided=model.config.use_tune,
        )

    def llm_flops_per_token(self, seq_len: int) -> float:
        """torchtitan's per-token figure for the decoder: 6 N + 12 l d t."""
        return 6 * self.llm_dense + 12 * self.llm_layers * self.llm_width * seq_len

    def step_flops(self, batch: FusionBatch) -> float:
        """Training FLOPs (forward + backward) of one micro-batch."""
        lengths = batch.attention_mask.sum(dim=1).double()
        tokens = float(lengths.sum())
        flops = 6 * self.llm_dense * tokens + 12 * self.llm_layers * self.llm_width * float((lengths**2).sum())
        if batch.labels is not None:
            flops += 6 * self.lm_head * float((batch.labels[:, 1:] != -100).sum())
        images = batch.num_images
        text = float(batch.vit_text_mask.shape[1]) if batch.vit_text_mask.numel() else 0.0
        full_view = self.patches + text
        # As FusionModel.encode_images runs them: tiles only for CARD's latents; one tile is the full view's own
        # pixels, embedded once, and without TUNE its features are the full view's.
        blocks = tile_views = tile_text = 0.0
        uses_tiles = batch.latent_count > 0
        if uses_tiles and self.question_guided_tiles:  # every latent block's tiles, beside its own question
            blocks = float(batch.latent_positions.shape[0])
            tile_views, tile_text = blocks * self.tiles, float(batch.latent_vit_text_mask.shape[1])
        elif uses_tiles and (self.tiles > 1 or self.text_guided):
            tile_views = images * self.tiles
        tile_view = self.patches + tile_text
        vit_tokens = images * full_view + tile_views * tile_view + float(batch.text_only_vit_text_mask.sum())
        vit_attention = images * full_view**2 + tile_views * tile_view**2
        flops += 6 * self.vit_dense * vit_tokens + 12 * self.vit_layers * self.vit_width * vit_attention
        embedded_views = images * (1 + self.tiles) if uses_tiles and self.tiles > 1 else images
        flops += 6 * self.patch_embedding_macs * embedded_views
        flops += 6 * self.mm_projector * vit_tokens
        flops += 6 * self.aux_projector * (images * (text + self.patches) + blocks * tile_text)
        flops += 6 * self.interaction * float(batch.latent_positions.numel())
        return flops


def _patch_embedding_macs(module: torch.nn.Module, image_size: int, patches: int) -> int:
    """Multiply-adds of the patch embedding on one square image (from shapes: it also works on sharded weights)."""
    if isinstance(module, ConvStem):
        return module.multiply_adds(image_size)
    if isinstance(module, torch.nn.Conv2d):  # SigLIP
        return conv_multiply_adds(module, image_size)[1]
    if isinstance(module, torch.nn.Linear):  # SigLIP2 embeds pre-cut patches
        return patches * module.in_features * module.out_features
    raise TypeError(f"FLOPs: unknown patch embedding {type(module).__name__}")


def peak_flops(device: torch.device) -> tuple[float, str]:
    """(peak FLOP/s of one device, how it was found)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_FLOPS.items():
            if key in name:
                return value, f"{name} bf16 dense peak"
        return float("nan"), f"{name}: peak unknown"
    return measure_matmul_flops(), "measured fp32 matmul peak of this CPU"


def measure_matmul_flops(size: int = 512, seconds: float = 0.3) -> float:
    """FLOP/s of repeated fp32 square matmuls: the practical peak on a CPU, which has no published figure."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - start)
