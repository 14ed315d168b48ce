"""Runs work units through the configured stages on Ray Data and writes each as a shard.

A row of the Ray dataset is one work unit carrying all its records, so one unit flows through the
stages and becomes one shard. Consecutive stages without a model run together in one Ray task per unit;
a stage with a model gets its own pool of actors that load the model once. The last of them writes the shard.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.config import RunConfig, StageSpec, import_plugins
from pipeline.record import SampleRecord
from pipeline.shards import OutputLayout, write_unit
from pipeline.stage import STAGES, RunContext, Stage
from pipeline.units import WorkUnit


class StageError(RuntimeError):
    """A stage raised on a unit; names both, so the failing piece of work is obvious."""


@dataclass(frozen=True)
class Segment:
    """Consecutive stages that run in the same Ray operator."""

    specs: tuple[StageSpec, ...]
    uses_model: bool


def plan_segments(stages: list[StageSpec]) -> list[Segment]:
    segments: list[Segment] = []
    run: list[StageSpec] = []
    for spec in stages:
        if STAGES.get(spec.name).uses_model:
            if run:
                segments.append(Segment(tuple(run), uses_model=False))
                run = []
            segments.append(Segment((spec,), uses_model=True))
        else:
            run.append(spec)
    if run:
        segments.append(Segment(tuple(run), uses_model=False))
    return segments


def build_stages(specs: tuple[StageSpec, ...] | list[StageSpec], context: RunContext) -> list[Stage]:
    return [STAGES.get(spec.name)(spec.typed_params(), context) for spec in specs]


def process_unit(stages: list[Stage], unit: WorkUnit, records: list[SampleRecord]) -> list[SampleRecord]:
    for stage in stages:
        try:
            records = stage.process(unit, records)
        except Exception as error:
            raise StageError(f"stage {stage.name!r} failed on unit {unit.unit_id}: {error}") from error
    return records


def run_units_locally(config: RunConfig, units: list[WorkUnit], layout: OutputLayout, context: RunContext) -> Iterator[dict[str, Any]]:
    """The same work in this process, without Ray: the reference the Ray path is measured and tested against."""
    stages = build_stages(config.stages, context)
    for unit in units:
        start = time.perf_counter()
        stats = write_unit(layout, unit, process_unit(stages, unit, []))
        yield {**stats, "busy_seconds": time.perf_counter() - start}


def run_units_on_ray(
    config: RunConfig, units: list[WorkUnit], layout: OutputLayout, context: RunContext
) -> Iterator[dict[str, Any]]:
    """Yield each unit's shard stats as it completes (in completion order). Ray must be initialised."""
    import ray.data

    segments = plan_segments(config.stages)
    _configure_ray_data(segments)
    rows = [{"unit": json.dumps(u.to_dict()), "records": pickle.dumps([]), "busy_seconds": 0.0} for u in units]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    for index, segment in enumerate(segments):
        concurrency = _segment_concurrency(segment)
        stage_args = {
            "specs_json": [spec.model_dump_json() for spec in segment.specs],
            "context": context,
            "plugins": config.plugins,
            # The last segment writes the shard itself, so records never cross a process boundary to be written.
            "write_root": str(layout.root) if index == len(segments) - 1 else None,
        }
        common = {"batch_size": 1, "batch_format": "pyarrow", **_segment_resources(segment)}
        if segment.uses_model:
            pool = ray.data.ActorPoolStrategy(size=concurrency or 1)
            dataset = dataset.map_batches(_SegmentActor, fn_constructor_kwargs=stage_args, compute=pool, **common)
        else:
            tasks = ray.data.TaskPoolStrategy(size=concurrency) if concurrency else None
            dataset = dataset.map_batches(_run_segment_task, fn_kwargs=stage_args, compute=tasks, **common)
    for row in dataset.iter_rows():
        yield {**json.loads(row["stats"]), "busy_seconds": row["busy_seconds"]}


def _configure_ray_data(segments: list[Segment]) -> None:
    """Set every execution option a run depends on (the data context outlives a run in its process)."""
    import ray.data
    from ray.util.debug import log_once

    data_context = ray.data.DataContext.get_current()
    # The run shows its own progress bar; claiming Ray Data's log-once key silences its warning about that.
    log_once("ray_data_progress_manager_disabled")
    data_context.enable_progress_bars = False
    data_context.print_on_execution_start = False
    # Reservation splits the CPUs between operators; with one operator it only leaves CPUs idle.
    data_context.op_resource_reservation_enabled = len(segments) > 1


def _segment_resources(segment: Segment) -> dict[str, float]:
    num_cpus = max(spec.resources.num_cpus for spec in segment.specs)
    num_gpus = max(spec.resources.num_gpus for spec in segment.specs)
    resources: dict[str, float] = {"num_cpus": num_cpus}
    if num_gpus:
        resources["num_gpus"] = num_gpus
    return resources


def _segment_concurrency(segment: Segment) -> int | None:
    """The tightest cap any of the segment's stages sets (they run in the same task), or None."""
    caps = [spec.resources.concurrency for spec in segment.specs if spec.resources.concurrency is not None]
    return min(caps) if caps else None


def _stages_from_json(specs_json: list[str], context: RunContext, plugins: list[str]) -> list[Stage]:
    import_plugins(plugins)
    return build_stages([StageSpec.model_validate_json(text) for text in specs_json], context)


def _process_batch(batch: pa.Table, stages: list[Stage], write_root: str | None) -> pa.Table:
    """Run the stages on each unit of the batch; return the records, or the shard stats when writing.

    ``busy_seconds`` accumulates the time each unit spent in stages and writing, across segments; it is
    reported with the stats (never written into them, which must not depend on timing).
    """
    units, payloads, stats, busy = [], [], [], []
    columns = zip(batch.column("unit").to_pylist(), batch.column("records").to_pylist(),
                  batch.column("busy_seconds").to_pylist(), strict=True)
    for unit_json, payload, busy_before in columns:
        start = time.perf_counter()
        unit = WorkUnit.from_dict(json.loads(unit_json))
        records = process_unit(stages, unit, pickle.loads(payload))
        if write_root:
            stats.append(json.dumps(write_unit(OutputLayout(Path(write_root)), unit, records)))
        else:
            units.append(unit_json)
            payloads.append(pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL))
        busy.append(busy_before + time.perf_counter() - start)
    if write_root:
        return pa.table({"stats": pa.array(stats, pa.string()), "busy_seconds": pa.array(busy, pa.float64())})
    return pa.table({
        "unit": pa.array(units, pa.string()),
        "records": pa.array(payloads, pa.large_binary()),
        "busy_seconds": pa.array(busy, pa.float64()),
    })


def _run_segment_task(
    batch: pa.Table, specs_json: list[str], context: RunContext, plugins: list[str], write_root: str | None
) -> pa.Table:
    return _process_batch(batch, _stages_from_json(specs_json, context, plugins), write_root)


class _SegmentActor:
    """Holds a model-backed stage for the life of a Ray actor, so the model loads once."""

    def __init__(self, specs_json: list[str], context: RunContext, plugins: list[str], write_root: str | None) -> None:
        self.stages = _stages_from_json(specs_json, context, plugins)
        self.write_root = write_root

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _process_batch(batch, self.stages, self.write_root)
