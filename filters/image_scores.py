"""Image scores of DATA.md step 4: CLIP(image, text), the detail score SSIM_a, and their total
``clip + 0.5 * ssim_a``, each kept as a score and optionally thresholded.

Best-of-N: a record holding ``candidates`` gets one score per candidate, ``<id>/candidate_<i>/<metric>``
(what ``choose_image`` reads), and its threshold applies to the best candidate; a record with one image
gets ``<id>/<metric>``. After ``choose_image`` the chosen candidate's value is also under ``<id>/<metric>``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from filters.ssim import ENCODER_SIZE, ssim_a
from pipeline.record import SampleRecord
from pipeline.stage import Filter, StageParams, UnitContext, register_stage

CLIP_METRIC = "clip_cosine"  # raw cosine similarity of unit-norm CLIP embeddings, in [-1, 1]


def scored_images(record: SampleRecord) -> list[tuple[str, np.ndarray]]:
    """(metric prefix, image): one per candidate when there are candidates, else the record's image."""
    if record.candidates:
        return [(f"candidate_{i}/", candidate.image) for i, candidate in enumerate(record.candidates)]
    if record.image is None:
        raise ValueError(f"{record.key} has no image or candidates to score; is an image stage configured before?")
    return [("", record.image)]


def best_value(scores: dict[str, float], metric: str) -> float:
    """The record's value of ``metric``: its own, or the best of its candidates'."""
    values = [v for name, v in scores.items() if name == metric or name.endswith(f"/{metric}")]
    return max(values)


def record_text(record: SampleRecord, field: str) -> str:
    text = record.text() if field == "text" else getattr(record, field)
    if not text.strip():
        raise ValueError(f"{record.key} has an empty {field}; CLIP has nothing to compare the image with")
    return text


class ClipScoreParams(StageParams):
    model: str = Field("clip", description="Name of an open_clip model under `models:`")
    text: Literal["description", "caption", "seed_caption", "text"] = Field(
        "description", description="Compared with the image; text: the description, else the caption (CLIP reads "
                                   "the first 77 tokens)")
    min_cosine: float | None = Field(None, ge=-1, le=1, description="Reject below this raw cosine; null: keep all")


@register_stage("clip_score")
class ClipScore(Filter):
    """``<id>/clip_cosine``: raw cosine of CLIP image and text embeddings (not CLIPScore's 2.5x or 100x scale)."""

    Params = ClipScoreParams
    params: ClipScoreParams
    version = "1"

    def score_batch(self, records: list[SampleRecord], unit: UnitContext) -> list[dict[str, float]]:
        pairs, owners = [], []
        for index, record in enumerate(records):
            text = record_text(record, self.params.text)
            for prefix, image in scored_images(record):
                pairs.append((record.seed, image, text))
                owners.append((index, prefix))
        scores: list[dict[str, float]] = [{} for _ in records]
        for (index, prefix), cosine in zip(owners, clip_cosines(unit, self.params.model, pairs), strict=True):
            scores[index][f"{prefix}{CLIP_METRIC}"] = cosine
        return scores

    def check(self, record: SampleRecord, scores: dict[str, float]) -> str | None:
        if self.params.min_cosine is None:
            return None
        value = best_value(scores, CLIP_METRIC)
        return f"low_clip: raw cosine {value:.4f} < {self.params.min_cosine:g}" if value < self.params.min_cosine else None


def clip_cosines(unit: UnitContext, model_name: str, pairs: list[tuple[int, np.ndarray, str]]) -> list[float]:
    """Raw CLIP cosine of each (seed, image, text), through the shared model and the model-call cache (each
    distinct text of a batch embedded once)."""
    model = unit.models[model_name]

    def compute(missing: list[dict]) -> list[float]:
        texts = list(dict.fromkeys(r["text"] for r in missing))
        text_vectors = dict(zip(texts, model.call("embed_texts", texts), strict=True))
        image_vectors = model.call("embed_images", [r["image"] for r in missing])
        return [float(np.dot(v, text_vectors[r["text"]])) for v, r in zip(image_vectors, missing, strict=True)]

    return unit.cache.map([(seed, {"image": image, "text": text}) for seed, image, text in pairs], compute)


class DetailParams(StageParams):
    encoder_size: int = Field(ENCODER_SIZE, ge=8, description="The vision encoder's square input side")
    min_ssim_a: float | None = Field(None, ge=-2, le=2, description="Reject below this; null: keep all")


@register_stage("detail_score")
class DetailScore(Filter):
    """``<id>/ssim_a``: SSIM_a of DATA.md (see filters/ssim.py); range [-2, 2]."""

    Params = DetailParams
    params: DetailParams

    def score(self, record: SampleRecord) -> dict[str, float]:
        return {f"{prefix}ssim_a": ssim_a(image, self.params.encoder_size) for prefix, image in scored_images(record)}

    def check(self, record: SampleRecord, scores: dict[str, float]) -> str | None:
        if self.params.min_ssim_a is None:
            return None
        value = best_value(scores, "ssim_a")
        return f"low_detail: SSIM_a {value:.4f} < {self.params.min_ssim_a:g}" if value < self.params.min_ssim_a else None


class TotalParams(StageParams):
    clip: str = Field("clip_score/clip_cosine", description="The CLIP score, as '<stage id>/<metric>'")
    detail: str = Field("detail_score/ssim_a", description="The detail score, as '<stage id>/<metric>'")
    detail_weight: float = Field(0.5, description="The paper's total is clip + 0.5 * ssim_a")
    min_total: float | None = Field(None, description="Reject below this; null: keep all (or select a top fraction)")


def _per_image(name: str, prefix: str) -> str:
    stage_id, _, metric = name.partition("/")
    return f"{stage_id}/{prefix}{metric}"


@register_stage("image_total")
class ImageTotal(Filter):
    """``<id>/total`` = clip + detail_weight * detail, per candidate too (so ``choose_image`` can use it)."""

    Params = TotalParams
    params: TotalParams

    def score(self, record: SampleRecord) -> dict[str, float]:
        prefixes = [f"candidate_{i}/" for i in range(len(record.candidates))] if record.candidates else [""]
        totals = {}
        for prefix in prefixes:
            names = [_per_image(self.params.clip, prefix), _per_image(self.params.detail, prefix)]
            missing = [n for n in names if n not in record.scores]
            if missing:
                raise KeyError(f"{record.key} has no score {missing[0]!r}; configure the stage that makes it first")
            totals[f"{prefix}total"] = record.scores[names[0]] + self.params.detail_weight * record.scores[names[1]]
        return totals

    def check(self, record: SampleRecord, scores: dict[str, float]) -> str | None:
        if self.params.min_total is None:
            return None
        value = best_value(scores, "total")
        return f"low_image_total: {value:.4f} < {self.params.min_total:g}" if value < self.params.min_total else None
