"""Stages: everything that produces or judges records implements one interface and registers by name.

The pipeline wires stages from the config alone; a model-backed generator or a new filter plugs in by
registering a ``Stage`` subclass, never by editing the pipeline.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from pipeline.record import SampleRecord
from pipeline.registry import Registry
from pipeline.units import WorkUnit


class StageParams(BaseModel):
    """Base for every stage's parameters; unknown keys are errors so typos fail loudly."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class RunContext:
    """Run-wide facts a stage may need; ``provenance`` is merged into every record it creates."""

    run_seed: int
    jpeg_quality: int = 90
    provenance: dict[str, Any] = field(default_factory=dict)


class Stage(ABC):
    """Takes the records of one work unit and returns them, created, extended, scored or rejected.

    A stage with ``uses_model = True`` is run by a pool of long-lived Ray actors so its model loads once
    per worker; others run as stateless Ray tasks.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[StageParams]] = StageParams
    uses_model: ClassVar[bool] = False

    def __init__(self, params: StageParams, context: RunContext) -> None:
        self.params = params
        self.context = context

    @abstractmethod
    def process(self, unit: WorkUnit, records: list[SampleRecord]) -> list[SampleRecord]:
        """Return the unit's records after this stage. Rejected records are kept, with their reason."""


class Filter(Stage):
    """A stage that scores pending records and rejects those that fail; scores are always kept."""

    def process(self, unit: WorkUnit, records: list[SampleRecord]) -> list[SampleRecord]:
        pending = [r for r in records if not r.is_rejected]
        for record, scores in zip(pending, self.score_batch(pending), strict=True):
            record.scores.update({f"{self.name}/{metric}": float(value) for metric, value in scores.items()})
            reason = self.check(record, scores)
            if reason:
                record.reject(self.name, reason)
        return records

    def score_batch(self, records: list[SampleRecord]) -> list[dict[str, float]]:
        """Scores of each record; override to batch model calls."""
        return [self.score(r) for r in records]

    def score(self, record: SampleRecord) -> dict[str, float]:
        return {}

    @abstractmethod
    def check(self, record: SampleRecord, scores: dict[str, float]) -> str | None:
        """The reason to reject ``record``, or None to keep it."""


STAGES: Registry[type[Stage]] = Registry("stage")

S = TypeVar("S", bound=type[Stage])


def register_stage(name: str) -> Callable[[S], S]:
    def add(cls: S) -> S:
        cls.name = name
        return STAGES.register(name)(cls)

    return add
