"""The shared CLIP model: one loaded open_clip model serves every stage that names it.

``models: {clip: {backend: open_clip, params: {model: ViT-B-32, pretrained: laion2b_s34b_b79k}}}``, or
``model: local-dir:/models/clip`` for a folder holding ``open_clip_config.json`` and weights, or ``pretrained:``
a checkpoint file. Embeddings are L2-normalised, so a dot product is the raw cosine similarity (the scale
DataComp and LAION report, -1 to 1; CLIPScore metrics multiply it by 2.5 or 100, this project never does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from pipeline.model_backend import ModelBackend, model_revision, register_backend
from pipeline.stage import StageParams

LOCAL_DIR = "local-dir:"


class OpenClipParams(StageParams):
    model: str = Field(description="open_clip model name (e.g. ViT-B-32), or local-dir:<folder> with "
                                   "open_clip_config.json and weights")
    pretrained: str | None = Field(None, description="Pretrained tag (e.g. laion2b_s34b_b79k) or a checkpoint file; "
                                                     "not used with local-dir:")
    revision: str | None = Field(None, description="Pins the weights in provenance and cache keys; default: the tag, "
                                                   "or a hash of the local files")
    device: str = Field("auto", description="cpu, cuda, cuda:1 ...; auto: cuda when available")
    precision: str = Field("fp32", description="open_clip precision: fp32, fp16, bf16, amp")

    @model_validator(mode="after")
    def _consistent(self) -> OpenClipParams:
        if self.model.startswith(LOCAL_DIR):
            folder = Path(self.model.removeprefix(LOCAL_DIR))
            if self.pretrained:
                raise ValueError(f"pretrained={self.pretrained!r} is ignored with {self.model}: leave it unset")
            if not (folder / "open_clip_config.json").is_file():
                raise ValueError(f"model {self.model}: {folder / 'open_clip_config.json'} not found")
        return self


@register_backend("open_clip")
class OpenClipBackend(ModelBackend):
    """``embed_images`` (RGB uint8 arrays) and ``embed_texts`` (strings): unit-norm float32 vectors."""

    Params = OpenClipParams
    params: OpenClipParams

    def __init__(self, params: OpenClipParams) -> None:
        super().__init__(params)
        import open_clip
        import torch

        device = params.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            params.model, pretrained=params.pretrained, device=device, precision=params.precision)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(params.model)

    @classmethod
    def identity(cls, params: OpenClipParams) -> dict[str, Any]:
        if params.model.startswith(LOCAL_DIR):
            folder = params.model.removeprefix(LOCAL_DIR)
            return {"backend": cls.kind, "model": params.model, "revision": model_revision(folder, params.revision)}
        pretrained = params.pretrained or "random-init"
        weights = pretrained if not Path(pretrained).is_file() else model_revision(str(Path(pretrained).parent))
        return {"backend": cls.kind, "model": f"{params.model}/{Path(pretrained).name}",
                "revision": params.revision or weights}

    def embed_images(self, images: list[np.ndarray]) -> list[np.ndarray]:
        import torch
        from PIL import Image

        batch = torch.stack([self.preprocess(Image.fromarray(np.asarray(image, dtype=np.uint8))) for image in images])
        with torch.inference_mode():
            features = self.model.encode_image(batch.to(self.device), normalize=True)
        return list(features.float().cpu().numpy().astype(np.float32))

    def embed_texts(self, texts: list[str]) -> list[np.ndarray]:
        import torch

        tokens = self.tokenizer([str(text) for text in texts])
        with torch.inference_mode():
            features = self.model.encode_text(tokens.to(self.device), normalize=True)
        return list(features.float().cpu().numpy().astype(np.float32))
