"""`diffusers`: any diffusers text-to-image pipeline, batched, one ``torch.Generator`` seed per image.

Requests are ``{"prompt": str, "seed": int}``; results are lossless ``(H, W, 3) uint8`` arrays, which the
run's call cache stores as they are. Each image has its own generator, so an image depends on its prompt and
seed only, not on the rest of its batch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from generators.llm.model_source import check_local_or_hub, resolve_model_path, torch_placement
from pipeline.model_backend import ModelBackend, model_revision, register_backend
from pipeline.stage import StageParams


class DiffusersParams(StageParams):
    path: str = Field(description="Local pipeline folder (model_index.json) or Hub id")
    revision: str | None = None
    pipeline_class: str | None = Field(
        None, description="A diffusers pipeline class name (e.g. FluxPipeline); default: AutoPipelineForText2Image")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field("auto", description="cpu, cuda, cuda:1, ...; auto: cuda when available")
    cpu_threads: int | None = Field(
        None, ge=1, description="torch threads on CPU (None: torch's default); small models on a shared machine "
        "run many times faster with 1 than with threads competing for busy cores")
    num_inference_steps: int = Field(28, ge=1)
    guidance_scale: float = Field(3.5, ge=0.0)
    height: int = Field(1024, ge=8)
    width: int = Field(1024, ge=8)
    negative_prompt: str | None = None
    max_sequence_length: int | None = Field(None, description="Text tokens for pipelines that take it (FLUX, SD3)")
    pipeline_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra arguments of each call")


@register_backend("diffusers")
class DiffusersBackend(ModelBackend):
    Params = DiffusersParams
    params: DiffusersParams

    def __init__(self, params: DiffusersParams) -> None:
        super().__init__(params)
        import diffusers
        import torch

        path = resolve_model_path(params.path)
        check_local_or_hub(path, f"diffusers path {params.path!r}")
        self.device, dtype = torch_placement(params.device, params.dtype, params.cpu_threads)
        name = params.pipeline_class or "AutoPipelineForText2Image"
        pipeline_class = getattr(diffusers, name, None)
        if pipeline_class is None:
            raise ValueError(f"diffusers has no pipeline class {name!r} (pipeline_class of {params.path!r})")
        self.pipeline = pipeline_class.from_pretrained(path, revision=params.revision, dtype=dtype)
        self.pipeline.to(self.device)
        self.pipeline.set_progress_bar_config(disable=True)
        self._torch = torch

    @classmethod
    def identity(cls, params: DiffusersParams) -> dict[str, Any]:
        return {"backend": cls.kind, "model": params.path,
                "revision": model_revision(resolve_model_path(params.path), params.revision),
                "pipeline_class": params.pipeline_class or "AutoPipelineForText2Image", "dtype": params.dtype}

    def render(self, requests: list[dict[str, Any]]) -> list[Any]:
        """One ``(H, W, 3) uint8`` image per ``{"prompt", "seed"}`` request."""
        import numpy as np

        p = self.params
        generators = [self._torch.Generator(device=self.device).manual_seed(int(r["seed"]) % 2**63) for r in requests]
        kwargs: dict[str, Any] = {"num_inference_steps": p.num_inference_steps, "guidance_scale": p.guidance_scale,
                                  "height": p.height, "width": p.width, "output_type": "np", **p.pipeline_kwargs}
        if p.negative_prompt is not None:
            kwargs["negative_prompt"] = [p.negative_prompt] * len(requests)
        if p.max_sequence_length is not None:
            kwargs["max_sequence_length"] = p.max_sequence_length
        with self._torch.inference_mode():
            images = self.pipeline(prompt=[r["prompt"] for r in requests], generator=generators, **kwargs).images
        return [np.clip(np.rint(np.asarray(image) * 255.0), 0, 255).astype(np.uint8) for image in images]
