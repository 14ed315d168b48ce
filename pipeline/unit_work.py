"""A unit's path through the stages, in pieces that the executors schedule.

Consecutive stages without a model form one segment and run in one task per unit; a stage with a model is
a segment of its own, run by a pool of actors; the writer is a CPU step of its own after the last segment.
A unit that fails as a whole (not one of its samples) carries its error to the end instead of its records.
"""

from __future__ import annotations

import json
import pickle
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import DatasetConfig, StageSpec
from pipeline.layout import OutputLayout
from pipeline.planning import WorkUnit
from pipeline.record import SampleRecord
from pipeline.stage import RunContext
from pipeline.stage_runner import ProgressReporter, StageRunner, StageStats, build_stages, new_records
from pipeline.unit_writer import WRITER_STAGE, write_unit

# CPUs a task reserves while it mostly waits on shared models, unless its stages say otherwise: small, so
# enough units are in flight at once for the models' replicas to batch their calls together.
MODEL_CLIENT_CPUS = 0.25


@dataclass(frozen=True)
class Segment:
    specs: tuple[StageSpec, ...]
    kind: str  # "cpu": tasks; "model": an actor pool holding the stage's own model; "client": tasks calling shared models

    @property
    def uses_model(self) -> bool:
        return self.kind == "model"

    @property
    def num_cpus(self) -> float:
        if self.kind == "client":
            explicit = [s.resources.num_cpus for s in self.specs if "num_cpus" in s.resources.model_fields_set]
            return max(explicit) if explicit else MODEL_CLIENT_CPUS
        return max(spec.resources.num_cpus for spec in self.specs)

    @property
    def label(self) -> str:
        return "+".join(spec.stage_id for spec in self.specs)


def segment_kind(spec: StageSpec) -> str:
    if spec.stage_class().uses_model:
        return "model"
    return "client" if spec.stage_class().models_used(spec.typed_params()) else "cpu"


def plan_segments(stages: list[StageSpec]) -> list[Segment]:
    """Consecutive stages of the same kind share a segment; a stage holding its own model is one alone."""
    segments: list[Segment] = []
    for spec in stages:
        kind = segment_kind(spec)
        if segments and segments[-1].kind == kind != "model":
            segments[-1] = Segment((*segments[-1].specs, spec), kind)
        else:
            segments.append(Segment((spec,), kind))
    return segments


@dataclass
class UnitOutcome:
    unit: WorkUnit
    stats: dict[str, Any] | None = None  # the unit's stats when it completed
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.stats is not None


@dataclass
class UnitInFlight:
    """What travels between segments: the unit, its records so far, and its stage stats, or its error."""

    unit: WorkUnit
    records: list[SampleRecord] | None = None
    stage_stats: dict[str, StageStats] | None = None
    error: str | None = None

    def to_row(self) -> dict[str, Any]:
        return {"unit": json.dumps(self.unit.to_dict()),
                "payload": pickle.dumps((self.records, self.stage_stats), protocol=pickle.HIGHEST_PROTOCOL),
                "error": self.error or ""}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> UnitInFlight:
        records, stage_stats = pickle.loads(row["payload"])
        return cls(WorkUnit.from_dict(json.loads(row["unit"])), records, stage_stats, row["error"] or None)


class SegmentWorker:
    """Runs one segment's stages on units; a unit error is retried ``retries`` times, then carried along."""

    def __init__(self, specs: list[StageSpec], context: RunContext, plugins: list[str], out_dir: str,
                 use_cache: bool, retries: int, reporter: ProgressReporter | None) -> None:
        self.runner = StageRunner(build_stages(specs, context, plugins), Path(out_dir), use_cache, reporter)
        self.context = context
        self.retries = retries

    def __call__(self, load: Callable[[], UnitInFlight]) -> UnitInFlight:
        """Run the segment on the unit ``load`` gives; each attempt loads a fresh copy of what came in."""
        item = load()
        if item.error:
            return item
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                item = load()
            records = new_records(item.unit, self.context) if item.records is None else item.records
            try:
                stats = self.runner.run(item.unit, records)
            except Exception as error:
                last_error = describe_error(error, f"stage run on unit {item.unit.unit_id}")
                continue
            return UnitInFlight(item.unit, records, {**(item.stage_stats or {}), **stats})
        return UnitInFlight(item.unit, error=last_error)


class WriterWorker:
    """The CPU step after the last segment: writes the unit's files and reports its outcome."""

    def __init__(self, out_dir: str, dataset: DatasetConfig, retries: int, reporter: ProgressReporter | None) -> None:
        self.layout = OutputLayout(Path(out_dir))
        self.dataset = dataset
        self.retries = retries
        self.reporter = reporter

    def __call__(self, item: UnitInFlight) -> UnitOutcome:
        if item.error:
            return UnitOutcome(item.unit, error=item.error)
        records = item.records if item.records is not None else []
        last_error = ""
        for _ in range(self.retries + 1):
            try:
                stats = write_unit(self.layout, item.unit, records, item.stage_stats or {}, self.dataset)
            except Exception as error:
                last_error = describe_error(error, f"writing unit {item.unit.unit_id}")
                continue
            if self.reporter:
                self.reporter.advanced(WRITER_STAGE, stats["samples"], stats["stages"][WRITER_STAGE]["rejected"])
            return UnitOutcome(item.unit, stats=stats)
        return UnitOutcome(item.unit, error=last_error)


def describe_error(error: BaseException, doing: str) -> str:
    where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    location = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    return f"{doing}: {type(error).__name__}: {' '.join(str(error).split())[:500]}{location}"
