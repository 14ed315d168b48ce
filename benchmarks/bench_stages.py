"""A model-style stage for the throughput benchmark: a small torch model spending fixed compute per sample."""

from __future__ import annotations

from pydantic import Field

from pipeline.record import SampleRecord
from pipeline.stage import Filter, StageParams, UnitContext, register_stage


class TorchModelParams(StageParams):
    width: int = Field(256, ge=8)
    depth: int = Field(6, ge=1)
    passes: int = Field(4, ge=1, description="Forward passes per sample: the fixed compute per sample")


@register_stage("bench_torch_model")
class TorchModelScore(Filter):
    """Loads an MLP once per actor and scores each image with it, one thread, a fixed amount of work each."""

    uses_model = True
    Params = TorchModelParams
    params: TorchModelParams

    def __init__(self, stage_id, params, context):
        super().__init__(stage_id, params, context)
        import torch

        torch.set_num_threads(1)
        torch.manual_seed(0)
        layers = []
        for _ in range(params.depth):
            layers += [torch.nn.Linear(params.width, params.width), torch.nn.GELU()]
        self.model = torch.nn.Sequential(*layers).eval()
        self.torch = torch

    def score_batch(self, records: list[SampleRecord], unit: UnitContext) -> list[dict[str, float]]:
        torch = self.torch
        with torch.inference_mode():
            pixels = torch.stack([torch.from_numpy(r.image[:16, :16].reshape(-1)[: self.params.width].copy())
                                  for r in records]).float().div(255)
            features = torch.nn.functional.pad(pixels, (0, self.params.width - pixels.shape[1]))
            for _ in range(self.params.passes):
                out = self.model(features)
            return [{"value": float(v)} for v in out.mean(dim=1)]

    def check(self, record: SampleRecord, scores: dict[str, float]) -> str | None:
        return None
