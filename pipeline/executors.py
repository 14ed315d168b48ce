"""Executors run work units through the stages and the writer and yield each unit's outcome.

``LocalExecutor`` does it in this process, one unit after another: the reference the Ray path is tested and
measured against. ``RayExecutor`` streams units through Ray Data: CPU segments as tasks, model segments on
actor pools that load their model once, the writer as a CPU step of its own.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.config import RunConfig
from pipeline.planning import WorkUnit
from pipeline.progress import ProgressBoard, RayProgressReporter, ray_progress_board, release_progress_board
from pipeline.resources import WRITER_CPUS, ray_map_args
from pipeline.stage import RunContext
from pipeline.unit_work import Segment, SegmentWorker, UnitInFlight, UnitOutcome, WriterWorker, plan_segments

logger = logging.getLogger(__name__)


class LocalExecutor:
    def __init__(self, config: RunConfig, out_dir: Path, context: RunContext, use_cache: bool) -> None:
        self.board = ProgressBoard()
        retries = config.faults.unit_retries
        self.worker = SegmentWorker(config.stages, context, config.plugins, str(out_dir), use_cache, retries, self.board)
        self.writer = WriterWorker(str(out_dir), config.dataset, retries, self.board)

    def snapshot(self) -> dict[str, Any]:
        return self.board.snapshot()

    def run(self, units: list[WorkUnit]) -> Iterator[UnitOutcome]:
        for unit in units:
            yield self.writer(self.worker(lambda unit=unit: UnitInFlight(unit)))

    def close(self) -> None:
        pass


class RayExecutor:
    """Ray must be initialised. One Ray Data execution per call of ``run``."""

    def __init__(self, config: RunConfig, out_dir: Path, context: RunContext, use_cache: bool) -> None:
        import ray

        self.config = config
        self.out_dir = str(out_dir)
        self.context = context
        self.use_cache = use_cache
        self.board = ray_progress_board()
        self.reporter = RayProgressReporter(self.board)
        self.placement_groups: list[Any] = []
        self._ray = ray

    def snapshot(self) -> dict[str, Any]:
        return self._ray.get(self.board.snapshot.remote(), timeout=10)

    def run(self, units: list[WorkUnit]) -> Iterator[UnitOutcome]:
        import ray.data

        if not units:
            return
        available_before = self._ray.available_resources()
        segments = plan_segments(self.config.stages)
        _configure_ray_data()
        retries = self.config.faults.unit_retries
        rows = [UnitInFlight(u).to_row() for u in units]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        with warnings.catch_warnings():
            # Retries and placement groups still go through ray_remote_args, deprecated in Ray 2.60 with no
            # replacement yet; pyproject.toml pins Ray below 2.64, which removes them.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=DeprecationWarning)
            dataset = self._pipeline(dataset, segments, retries)
        seen = set()
        try:
            for row in dataset.iter_rows():
                outcome = _outcome_from_row(row)
                seen.add(outcome.unit.unit_id)
                yield outcome
        finally:
            self._remove_placement_groups()
            dataset = None
            _wait_for_release(available_before)
        locations = self.snapshot()["locations"]
        for unit in units:
            if unit.unit_id not in seen:
                yield UnitOutcome(unit, error=worker_died(locations.get(unit.unit_id, "the first stage"), unit,
                                                          retries + 1))

    def _pipeline(self, dataset: Any, segments: list[Segment], retries: int) -> Any:
        import ray.data

        writer_args = {"out_dir": self.out_dir, "dataset": self.config.dataset, "retries": retries,
                       "reporter": self.reporter}
        writes_in_last_task = writer_joins_task(segments[-1])
        for segment in segments:
            worker_args = {"specs": list(segment.specs), "context": self.context, "plugins": self.config.plugins,
                           "out_dir": self.out_dir, "use_cache": self.use_cache, "retries": retries,
                           "reporter": self.reporter}
            common = {"batch_size": 1, "batch_format": "pyarrow"}
            if segment.uses_model:
                dataset = dataset.map_batches(_SegmentActor, fn_constructor_kwargs=worker_args, **common,
                                              **ray_map_args(segment.specs[0], retries, self.placement_groups))
                continue
            caps = [s.resources.concurrency for s in segment.specs if isinstance(s.resources.concurrency, int)]
            envs = [s.resources.runtime_env for s in segment.specs if s.resources.runtime_env]
            if segment is segments[-1] and writes_in_last_task:
                task, kwargs = _run_segment_and_write_task, {"writer_args": writer_args, **worker_args}
            else:
                task, kwargs = _run_segment_task, worker_args
            dataset = dataset.map_batches(
                task, fn_kwargs=kwargs, **common, num_cpus=segment.num_cpus,
                compute=ray.data.TaskPoolStrategy(size=min(caps)) if caps else None,
                max_retries=retries, **({"runtime_env": _merge(envs)} if envs else {}))
        if not writes_in_last_task:
            dataset = dataset.map_batches(_write_units_task, batch_size=1, batch_format="pyarrow",
                                          num_cpus=WRITER_CPUS, max_retries=retries, fn_kwargs=writer_args)
        return dataset

    def _remove_placement_groups(self) -> None:
        """Ray keeps a placement group's reservation until it is removed, also after its actor is gone."""
        from ray.util.placement_group import remove_placement_group

        while self.placement_groups:
            remove_placement_group(self.placement_groups.pop())

    def close(self) -> None:
        self._remove_placement_groups()
        release_progress_board(self.board)


def _wait_for_release(available_before: dict[str, float], timeout: float = 60.0) -> None:
    """Wait until the finished execution's actors have given their CPUs and GPUs back.

    Ray Data lets its actors go by dropping references, so they may hold their reservations for a while; the
    next round's pools (the same GPUs, a placement group) would otherwise wait for them, for ever if a
    reference lingers.
    """
    import gc
    import time

    import ray

    deadline = time.monotonic() + timeout
    delay = 0.01  # task-only executions give their CPUs back within milliseconds: poll fast, then back off
    while True:
        if delay >= 0.1:
            gc.collect()  # a reference cycle may still hold an actor
        now = ray.available_resources()
        short = {k: v for k, v in available_before.items() if k in ("CPU", "GPU") and now.get(k, 0.0) < v - 1e-6}
        if not short or time.monotonic() > deadline:
            break
        time.sleep(delay)
        delay = min(0.2, 2 * delay)
    if short:
        logger.warning("the last round's workers still hold %s after %.0f s", short, timeout)


def _configure_ray_data() -> None:
    """Set every execution option a run depends on (the data context outlives a run in its process)."""
    import ray.data
    from ray.util.debug import log_once

    data_context = ray.data.DataContext.get_current()
    # The run draws its own per-stage bars; claiming Ray Data's log-once key silences its warning about that.
    log_once("ray_data_progress_manager_disabled")
    data_context.enable_progress_bars = False
    data_context.print_on_execution_start = False
    # A unit whose worker keeps dying fails alone; the run finishes the others and lists it.
    data_context.max_errored_blocks = -1
    # Reservation splits the CPUs between the operators (segments and writer): on a small node each gets less
    # than one task's CPUs and units ran one at a time (2 workers: 1.07x the plain loop with it). Actor pools
    # reserve their own resources when they start, so no operator starves without it. Turning it off lets more
    # units share a shared model's replica at once, which is safe because a replica batches per call
    # (pipeline/model_services.py): outputs do not depend on which units ran together.
    data_context.op_resource_reservation_enabled = False
    # The downstream-capacity policy weighs an operator's output bytes against what its consumer holds. The writer's
    # outputs are outcome rows of a few hundred bytes each, which the driver reads at once, yet their count alone
    # tripped the ratio: the writer was held back while a model actor ran and every later unit was written only
    # after the model's last batch (measured: a 3 s tail on a 30 s run). Without it a fast stage may run ahead of a
    # slow one by whole units, held in Ray's object store, which spills to disk when full.
    data_context.downstream_capacity_backpressure_ratio = None


def _merge(envs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for env in envs:
        for key, value in env.items():
            if isinstance(value, dict):
                merged.setdefault(key, {}).update(value)
            else:
                merged[key] = value
    return merged


def _map_rows(batch: pa.Table, run_row: Callable[[dict[str, Any]], UnitInFlight]) -> pa.Table:
    return pa.Table.from_pylist([run_row(row).to_row() for row in batch.to_pylist()], schema=_ROW_SCHEMA)


def _loader(row: dict[str, Any]) -> Callable[[], UnitInFlight]:
    """What a SegmentWorker loads its unit with: a fresh copy of the row's unit on every attempt."""
    return lambda: UnitInFlight.from_row(row)


_ROW_SCHEMA = pa.schema([("unit", pa.string()), ("payload", pa.large_binary()), ("error", pa.string())])


def _run_segment_task(batch: pa.Table, **worker_args: Any) -> pa.Table:
    worker = SegmentWorker(**worker_args)
    return _map_rows(batch, lambda row: worker(_loader(row)))


class _SegmentActor:
    """Holds a model-backed stage for the life of a Ray actor, so the model loads once.

    Ray retries the units an actor held when it died, also those only queued on it (the pool keeps one unit
    queued per actor, so the next starts without waiting for the driver's scheduling loop, which polls every
    0.1 s). A unit's death budget (``faults.unit_retries``) is therefore kept here, on the progress board:
    only the deaths during which the unit was running count against it.
    """

    def __init__(self, **worker_args: Any) -> None:
        self.worker = SegmentWorker(**worker_args)
        self.segment = Segment(tuple(worker_args["specs"]), "model").label
        self.reporter = worker_args["reporter"]
        self.retries = worker_args["retries"]

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _map_rows(batch, self._run_row)

    def _run_row(self, row: dict[str, Any]) -> UnitInFlight:
        if not row["error"]:
            unit = WorkUnit.from_dict(json.loads(row["unit"]))
            deaths = self.reporter.started(unit.unit_id, self.segment)
            if deaths > self.retries:
                return UnitInFlight(unit, error=worker_died(self.segment, unit, deaths))
        return self.worker(_loader(row))


def worker_died(stage: str, unit: WorkUnit, times: int) -> str:
    return (f"the Ray worker running stage {stage!r} on unit {unit.unit_id} died {times} time(s) (a crash outside "
            "Python, e.g. out of memory; see the Ray logs)")


def writer_joins_task(segment: Segment) -> bool:
    """Whether the writer runs in the last segment's own task: after CPU stages whose tasks hold at least the
    writer's CPUs. Ray Data would fuse the two tasks anyway; calling the writer directly also spares pickling the
    unit's records (a few MB of lossless images) into a block and back. After a model segment the writer stays a
    task of its own, so an actor holding an accelerator never writes files."""
    return segment.kind == "cpu" and segment.num_cpus >= WRITER_CPUS


def _run_segment_and_write_task(batch: pa.Table, writer_args: dict[str, Any], **worker_args: Any) -> pa.Table:
    worker = SegmentWorker(**worker_args)
    writer = WriterWorker(**writer_args)
    return _outcome_table([writer(worker(_loader(row))) for row in batch.to_pylist()])


def _write_units_task(batch: pa.Table, **writer_args: Any) -> pa.Table:
    writer = WriterWorker(**writer_args)
    return _outcome_table([writer(UnitInFlight.from_row(row)) for row in batch.to_pylist()])


def _outcome_table(outcomes: list[UnitOutcome]) -> pa.Table:
    return pa.table({
        "unit": [json.dumps(o.unit.to_dict()) for o in outcomes],
        "stats": [json.dumps(o.stats) if o.stats is not None else "" for o in outcomes],
        "error": [o.error or "" for o in outcomes],
    })


def _outcome_from_row(row: dict[str, Any]) -> UnitOutcome:
    unit = WorkUnit.from_dict(json.loads(row["unit"]))
    return UnitOutcome(unit, stats=json.loads(row["stats"]) if row["stats"] else None, error=row["error"] or None)
