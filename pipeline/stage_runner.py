"""Runs stages on one work unit's records in this process: batching, fault isolation, cache, cost, progress.

Both executors (in-process and Ray) run units through this, so a stage behaves the same everywhere. A stage
that raises on a batch is retried sample by sample; the samples that still raise become rejects with reason
``error:<ExceptionType>: <message>`` and the rest go on.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from pipeline.cache import CallCache
from pipeline.config import StageSpec, import_plugins
from pipeline.layout import OutputLayout
from pipeline.model_services import ModelAccess, ModelUsage
from pipeline.planning import WorkUnit
from pipeline.record import SampleRecord
from pipeline.stage import RunContext, Stage, UnitContext


@dataclass
class StageStats:
    """One stage's work on one unit (or, summed, on a run)."""

    records_in: int = 0  # pending records it worked on
    rejected: int = 0  # of those, rejected by it (errors included)
    errors: int = 0  # rejected because it raised on them
    busy_seconds: float = 0.0
    gpu_seconds: float = 0.0  # busy seconds x GPUs its worker reserves, plus its share of shared models' GPU time
    model_seconds: float = 0.0  # time shared models spent on its calls
    cache_hits: int = 0
    cache_misses: int = 0

    def add(self, other: StageStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageStats:
        return cls(**data)


class ProgressReporter(Protocol):
    def unit_entered(self, unit_id: str, stage_id: str) -> None: ...

    def advanced(self, stage_id: str, records: int, rejected: int) -> None: ...


class NoProgress:
    def unit_entered(self, unit_id: str, stage_id: str) -> None:
        pass

    def advanced(self, stage_id: str, records: int, rejected: int) -> None:
        pass


def new_records(unit: WorkUnit, context: RunContext) -> list[SampleRecord]:
    """The unit's records before any stage: key, seed and run provenance; the first stage fills them."""
    return [
        SampleRecord(key=unit.sample_key(p), category=unit.category, split=unit.split, seed=unit.sample_seed(p),
                     provenance={**context.provenance, "stages": {}})
        for p in unit.positions
    ]


def build_stages(specs: list[StageSpec], context: RunContext, plugins: list[str]) -> list[tuple[StageSpec, Stage]]:
    import_plugins(plugins)
    return [(spec, spec.stage_class()(spec.stage_id, spec.typed_params(), context)) for spec in specs]


class StageRunner:
    def __init__(self, stages: list[tuple[StageSpec, Stage]], out_dir: Path | None, use_cache: bool = True,
                 reporter: ProgressReporter | None = None) -> None:
        self.stages = stages
        self.layout = OutputLayout(out_dir) if out_dir is not None else None
        self.use_cache = use_cache
        self.reporter = reporter or NoProgress()

    def run(self, unit: WorkUnit, records: list[SampleRecord]) -> dict[str, StageStats]:
        """Run every stage on the unit's records in place; returns each stage's stats."""
        stats = {}
        for spec, stage in self.stages:
            self.reporter.unit_entered(unit.unit_id, spec.stage_id)
            stats[spec.stage_id] = self._run_stage(spec, stage, unit, records)
        return stats

    def _run_stage(self, spec: StageSpec, stage: Stage, unit: WorkUnit, records: list[SampleRecord]) -> StageStats:
        cache_path = self.layout.cache_file(spec.stage_id, unit) if self.layout else None
        cache = CallCache(cache_path, stage.fingerprint(), enabled=self.use_cache)
        usage = ModelUsage()
        models = ModelAccess(stage.context, stage.models_used(stage.params), usage, unit.unit_id)
        context = UnitContext(unit=unit, cache=cache, models=models)
        provenance = stage.provenance()
        stats = StageStats()
        start = time.perf_counter()
        passed = [r for r in records if r.is_rejected]
        pending = [r for r in records if not r.is_rejected]
        if passed:
            self.reporter.advanced(spec.stage_id, len(passed), 0)
        batch_size = spec.resources.batch_size or max(1, len(pending))
        for begin in range(0, len(pending), batch_size):
            batch = pending[begin:begin + batch_size]
            self._process_isolated(stage, batch, context)
            for record in batch:
                record.provenance.setdefault("stages", {})[spec.stage_id] = provenance
            rejected = sum(1 for r in batch if r.is_rejected and r.reject_stage == spec.stage_id)
            stats.records_in += len(batch)
            stats.rejected += rejected
            stats.errors += sum(1 for r in batch if r.is_error and r.reject_stage == spec.stage_id)
            self.reporter.advanced(spec.stage_id, len(batch), rejected)
        cache.save()
        stats.busy_seconds = time.perf_counter() - start
        stats.gpu_seconds = stats.busy_seconds * spec.resources.gpus_reserved + usage.gpu_seconds
        stats.model_seconds = usage.seconds
        stats.cache_hits, stats.cache_misses = cache.hits, cache.misses
        return stats

    @staticmethod
    def _process_isolated(stage: Stage, batch: list[SampleRecord], context: UnitContext) -> None:
        snapshots = [r.snapshot() for r in batch]
        try:
            stage.process(batch, context)
            return
        except Exception:  # a bad sample, or the batch: find out sample by sample
            for record, snapshot in zip(batch, snapshots, strict=True):
                record.restore(snapshot)
        for record, snapshot in zip(batch, snapshots, strict=True):
            try:
                stage.process([record], context)
            except Exception as error:
                record.restore(snapshot)
                record.reject_with_error(stage.id, error)
