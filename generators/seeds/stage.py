"""`seed_captions`: fills ``record.seed_caption`` from the configured pool, before any model is called.

Seeds that cannot make a prompt (too few or too many words, no letters) are rejected here with their
reason, so no model call is spent on them; the run's rule filter on the seed text follows this stage.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from generators.seeds.assignment import pool_index
from generators.seeds.sources import SourceKind, load_pool
from pipeline.record import SampleRecord
from pipeline.stage import Stage, StageParams, UnitContext, register_stage


class SeedCaptionParams(StageParams):
    source: SourceKind = "builtin"
    path: str | None = Field(None, description="The file or dataset folder (not for builtin)")
    field: str = Field("caption", description="jsonl key, parquet column or dataset column of the caption")
    split: str = Field("train", description="Split of a Hugging Face dataset folder")
    topics: list[str] = Field(default_factory=list, description="Built-in topic lists to use; empty: all")
    min_words: int = Field(3, ge=1)
    max_words: int = Field(77, ge=1)


@register_stage("seed_captions")
class SeedCaptionStage(Stage):
    role = "generator"
    version = "1"
    Params = SeedCaptionParams
    params: SeedCaptionParams

    def pool(self) -> tuple[tuple[str, ...], str]:
        p = self.params
        return load_pool(p.source, p.path, p.field, p.split, tuple(p.topics))

    def provenance(self) -> dict[str, Any]:
        captions, digest = self.pool()
        return {**super().provenance(), "source": self.params.source, "path": self.params.path,
                "pool_size": len(captions), "pool_sha256": digest}

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        captions, digest = self.pool()
        positions = {unit.unit.sample_key(p): p for p in unit.unit.positions}
        for record in records:
            index, cycle = pool_index(len(captions), digest, self.context.run_seed, record.category,
                                      record.split, positions[record.key])
            record.seed_caption = captions[index]
            record.metadata["seed_caption"] = {"index": index, "cycle": cycle}
            reason = self.admission_problem(record.seed_caption)
            if reason:
                record.reject(self.id, reason)

    def admission_problem(self, caption: str) -> str | None:
        count = len(caption.split())
        if not any(ch.isalpha() for ch in caption):
            return "seed_not_text: the seed caption has no letters"
        if count < self.params.min_words:
            return f"seed_too_short: {count} words < {self.params.min_words}"
        if count > self.params.max_words:
            return f"seed_too_long: {count} words > {self.params.max_words}"
        return None
