"""Top-fraction selection (DATA.md step 4's "or a top fraction"): keep the best ``fraction`` of each category
and split by a score, decided over the whole run like dedup.

The signature is the score; ``decide`` ranks every accepted sample of a category and split by it (ties: the
smaller key ranks higher) and removes all below the top ``ceil(fraction * n)``. Top-up rounds then add
samples until the split has its target after the cut, so ``dataset.max_attempts_factor`` must be at least
``1 / fraction`` for the target to be reachable.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable

from pydantic import Field

from pipeline.record import SampleRecord
from pipeline.stage import GlobalStage, StageParams, UnitContext, register_stage


class TopFractionParams(StageParams):
    score: str = Field(description="The score to rank by, as '<stage id>/<metric>' (e.g. image_total/total)")
    fraction: float = Field(gt=0, le=1, description="Share of each category and split kept")


def split_of(key: str) -> str:
    """``<category>_<split>`` of a sample key (``<category>_<split>_<position>``)."""
    return key.rsplit("_", 1)[0]


@register_stage("top_fraction")
class TopFraction(GlobalStage):
    Params = TopFractionParams
    params: TopFractionParams

    def signatures(self, records: list[SampleRecord], unit: UnitContext) -> list[bytes]:
        missing = [r.key for r in records if self.params.score not in r.scores]
        if missing:
            raise KeyError(f"{missing[0]} has no score {self.params.score!r}; configure the stage that makes it first")
        return [struct.pack(">d", r.scores[self.params.score]) for r in records]

    def decide(self, signatures: Iterable[tuple[str, bytes]]) -> dict[str, str]:
        by_split: dict[str, list[tuple[float, str]]] = {}
        for key, signature in signatures:
            by_split.setdefault(split_of(key), []).append((struct.unpack(">d", signature)[0], key))
        removed = {}
        for split, entries in by_split.items():
            ranked = sorted(entries, key=lambda e: (-e[0], e[1]))
            keep = math.ceil(self.params.fraction * len(ranked))
            cut = ranked[keep - 1][0]
            for value, key in ranked[keep:]:
                removed[key] = (f"below_top_fraction: {self.params.score} {value:.4g} below the top "
                                f"{self.params.fraction:g} of {split} (cut {cut:.4g}, {len(ranked)} ranked)")
        return removed
