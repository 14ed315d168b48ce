"""`fusion synth`: plan rounds of work units, run them, decide the accepted set, write shards, index, describe.

1. Plan: each category and split wants N accepted samples; round 0 tries N positions.
2. Execute: units that are not complete run through the stages and the writer (on Ray, or in-process).
3. Tally: a split short of N after filtering gets a top-up round of new positions, up to
   ``max_attempts_factor`` x N; a split with a failed unit waits (its count is unknown) and the run, after
   finishing everything else, lists the unit in ``failed_units.json`` and exits non-zero.
4. Assemble: the first N accepted samples by position become the shards (see ``shard_writer``).
5. Index and describe: ``manifest.json``, ``sizes.json`` and the dataset card.

Rerunning into the same folder resumes: complete units are skipped and the same rounds are planned again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import ConfigError, RunConfig, data_fields, differing_fields, import_plugins, save_config
from pipeline.executors import LocalExecutor, RayExecutor
from pipeline.fileio import atomic_write_text, remove_stale_temp_files
from pipeline.global_decisions import decide_globally, global_specs
from pipeline.indexing import read_json, write_index
from pipeline.layout import OutputLayout
from pipeline.model_services import start_model_services
from pipeline.planning import SplitTally, SplitTarget, WorkUnit, plan_round, split_targets
from pipeline.progress import ProgressDisplay
from pipeline.provenance import package_versions, record_provenance
from pipeline.ray_session import ray_session
from pipeline.resources import ClusterResources, preflight_problems
from pipeline.shard_writer import plan_shards, select_accepted, shard_is_current, write_shard
from pipeline.stage import RunContext
from pipeline.unit_work import UnitOutcome
from pipeline.unit_writer import WRITER_STAGE

logger = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """The run finished what it could, but units failed or too many samples errored; rerun to retry."""


class ResourcesUnavailable(RuntimeError):
    """The cluster cannot hold the stages' worker pools."""


@dataclass(frozen=True)
class SynthesisResult:
    out_dir: Path
    manifest: dict[str, Any]
    units_run: int
    units_skipped: int
    busy_seconds: float = 0.0  # time workers spent in stages and writing, summed over units

    @property
    def card_path(self) -> Path:
        return OutputLayout(self.out_dir).card


@dataclass
class RoundsState:
    units: dict[str, list[WorkUnit]] = field(default_factory=dict)  # by split name, in position order
    failed: dict[str, str] = field(default_factory=dict)  # unit id -> error
    blocked: set[str] = field(default_factory=set)  # splits with a failed unit
    units_run: int = 0
    units_skipped: int = 0
    busy_seconds: float = 0.0
    removed: dict[str, tuple[str, str]] = field(default_factory=dict)  # by run-wide stages: key -> (stage, reason)


# Shards are copies of unit tar members plus parquet work, most of it outside the GIL: threads of this process
# write them. Ray tasks pay off only for data large enough to split across nodes: a task whose worker has to start
# (the pool's idle workers are gone after a long model stage) cost 2-3 s for 14 small shards, threads 0.3 s.
SHARD_THREADS = 4
SHARD_TASKS_MIN_BYTES = 2 << 30


def synthesize(config: RunConfig, out_dir: Path, address: str | None = None, use_ray: bool = True,
               use_cache: bool = True, allow_version_change: bool = False) -> SynthesisResult:
    """Synthesize the dataset of ``config`` into ``out_dir``; rerunning resumes where a killed run stopped.

    Raises ``RunFailed`` after writing everything it could when units failed or too many samples errored.
    """
    from pipeline.card import write_card

    layout = OutputLayout(Path(out_dir))
    layout.root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(layout.root):
        _check_same_dataset(layout, config)
        _check_versions(layout, config, allow_version_change)
        save_config(config, layout.config)
        for path in remove_stale_temp_files(layout.root):
            logger.info("removed partial file of an interrupted run: %s", path)

        targets = split_targets({c: v.split_sizes() for c, v in config.categories.items()},
                                config.dataset.max_attempts_factor)
        context = run_context(config)
        check_stages_build(config, context)
        state = RoundsState()
        error: RunFailed | None = None
        with (ray_session(config.ray, address) if use_ray else contextlib.nullcontext()):
            services = None
            if use_ray:
                _preflight(config)
                services = start_model_services(config)
                context = dataclasses.replace(context, model_services=services.handles)
            executor = (RayExecutor if use_ray else LocalExecutor)(config, layout.root, context, use_cache)
            try:
                started = time.perf_counter()
                _run_rounds(config, layout, targets, executor, state)
                logger.info("work units finished in %.1f s (%d run, %d already complete)",
                            time.perf_counter() - started, state.units_run, state.units_skipped)
            except RunFailed as failure:
                error = failure
            finally:
                executor.close()
                if services is not None:
                    services.stop()
            _write_failed_units(layout, state.failed)
            started = time.perf_counter()
            shards = _assemble(config, layout, [t for t in targets if t.name not in state.blocked], state, use_ray)
            logger.info("%d shards ready in %.1f s", len(shards), time.perf_counter() - started)
        started = time.perf_counter()
        complete = not state.failed and error is None
        manifest = write_index(layout, config, targets, shards, state.units, state.failed, complete, state.removed)
        write_card(layout.root)
        logger.info("manifest and card written in %.1f s", time.perf_counter() - started)
    if error is None and state.failed:
        error = RunFailed(_failure_summary(state.failed, layout))
    if error is not None:
        raise error
    return SynthesisResult(layout.root, manifest, units_run=state.units_run, units_skipped=state.units_skipped,
                           busy_seconds=state.busy_seconds)


def _run_rounds(config: RunConfig, layout: OutputLayout, targets: list[SplitTarget], executor: Any,
                state: RoundsState) -> None:
    tallies: dict[str, SplitTally] = {}
    active = list(targets)
    round_number = 0
    errors = ErrorBudget(config)
    while active:
        planned = plan_round(active, tallies, config.seed, config.dataset.unit_size, round_number)
        if not planned:
            break
        for unit in planned:
            state.units.setdefault(f"{unit.category}/{unit.split}", []).append(unit)
        todo = [u for u in planned if not _unit_complete(layout, u)]
        state.units_skipped += len(planned) - len(todo)
        if todo:
            label = "round 0" if round_number == 0 else f"top-up round {round_number}"
            logger.info("%s: %d units (%d samples) to run, %d already complete", label, len(todo),
                        sum(u.num_samples for u in todo), len(planned) - len(todo))
            stage_ids = [s.stage_id for s in config.stages] + [WRITER_STAGE]
            total = sum(u.num_samples for u in todo)
            # closing(): stopping early must shut the Ray Data execution down, or its actors keep their CPUs.
            with ProgressDisplay(stage_ids, total, executor.snapshot, enabled=config.ray.progress), \
                    contextlib.closing(executor.run(todo)) as outcomes:
                for outcome in outcomes:
                    _record_outcome(outcome, state, errors)
        state.blocked |= {f"{u.category}/{u.split}" for u in todo if u.unit_id in state.failed}
        active = [t for t in active if t.name not in state.blocked]
        if global_specs(config):
            complete = {name: [u for u in units if _unit_complete(layout, u)] for name, units in state.units.items()}
            state.removed = decide_globally(config, layout, complete)
        removed_by_split = Counter(_split_of_key(config, key) for key in state.removed)
        tallies = {t.name: _tally(layout, state.units[t.name], removed_by_split[t.name]) for t in active}
        round_number += 1


def _unit_complete(layout: OutputLayout, unit: WorkUnit) -> bool:
    """Stats written last, and the files they describe still there."""
    return layout.unit_stats(unit).is_file() and layout.unit_tar(unit).is_file() and layout.unit_index(unit).is_file()


def _record_outcome(outcome: UnitOutcome, state: RoundsState, errors: ErrorBudget) -> None:
    if outcome.ok:
        state.units_run += 1
        state.busy_seconds += sum(s["busy_seconds"] for s in outcome.stats["stages"].values())
        errors.add(outcome.stats["samples"], outcome.stats["errors"], outcome.stats["error_examples"])
    else:
        logger.error("unit %s failed: %s", outcome.unit.unit_id, outcome.error)
        state.failed[outcome.unit.unit_id] = outcome.error
        errors.add(outcome.unit.num_samples, outcome.unit.num_samples,
                   [{"key": outcome.unit.unit_id, "stage": "unit", "reason": outcome.error}])
    errors.check(state)


class ErrorBudget:
    """Stops the run early when more than ``max_failed_fraction`` of the samples seen ended in an error."""

    def __init__(self, config: RunConfig) -> None:
        self.limit = config.faults.max_failed_fraction
        self.minimum = config.faults.min_samples_before_abort
        self.samples = 0
        self.errors = 0
        self.examples: Counter = Counter()

    def add(self, samples: int, errors: int, examples: list[dict[str, str]]) -> None:
        self.samples += samples
        self.errors += errors
        for example in examples:
            self.examples[f"{example['stage']}: {example['reason'][:200]}"] += 1

    def check(self, state: RoundsState) -> None:
        if self.samples >= self.minimum and self.errors > self.limit * self.samples:
            common = "; ".join(f"{text} (x{n})" for text, n in self.examples.most_common(3))
            raise RunFailed(
                f"stopping early: {self.errors} of the {self.samples} samples so far ended in an error "
                f"(more than max_failed_fraction={self.limit:g}); most common: {common}. Finished units are kept; "
                "fix the cause and rerun with the same --out to continue")


def _tally(layout: OutputLayout, units: list[WorkUnit], removed: int) -> SplitTally:
    accepted = sum(read_json(layout.unit_stats(u))["accepted"] for u in units) - removed
    return SplitTally(positions=sum(u.num_samples for u in units), accepted=accepted, units=len(units))


def _split_of_key(config: RunConfig, key: str) -> str:
    category, split, _ = key.rsplit("_", 2)
    return f"{next(c for c in config.categories if c.lower() == category)}/{split}"


def _assemble(config: RunConfig, layout: OutputLayout, targets: list[SplitTarget], state: RoundsState,
              use_ray: bool) -> list[dict]:
    """Write the shards of every settled split (on Ray, as parallel tasks); returns the stats of its shards."""
    if state.failed and global_specs(config):
        logger.warning("no shard is written while units are missing: run-wide stages decide over the whole run")
        return []
    all_units = [u for units in state.units.values() for u in units if _unit_complete(layout, u)]
    score_names = sorted({name for u in all_units for name in read_json(layout.unit_stats(u))["score_names"]})
    current, pending = [], []
    for target in targets:
        units = state.units.get(target.name, [])
        if not units or not all(_unit_complete(layout, u) for u in units):
            continue
        selected, _ = select_accepted(layout, target, units, state.removed)
        for plan in plan_shards(target, selected, config.dataset.shard_size):
            if shard_is_current(layout, plan):
                current.append(read_json(layout.shard_stats(plan.category, plan.split, plan.index)))
            else:
                pending.append((plan, units))
        if len(selected) < target.target:
            logger.warning("%s: %d of %d samples accepted after %d attempts (max_attempts_factor %g)",
                           target.name, len(selected), target.target, sum(u.num_samples for u in units),
                           config.dataset.max_attempts_factor)
    args = [(layout, plan, units, score_names, config.dataset.image_format, state.removed) for plan, units in pending]
    if use_ray and len(pending) > 1 and _unit_bytes(layout, pending) >= SHARD_TASKS_MIN_BYTES:
        import ray

        remote = ray.remote(num_cpus=1, max_retries=config.faults.unit_retries)(write_shard)
        written = ray.get([remote.remote(*a) for a in args])
    else:
        with ThreadPoolExecutor(max_workers=SHARD_THREADS) as pool:
            written = list(pool.map(lambda a: write_shard(*a), args))
    order = {(t.category, t.split): i for i, t in enumerate(targets)}
    return sorted(current + written, key=lambda s: (order[(s["category"], s["split"])], s["index"]))


def _unit_bytes(layout: OutputLayout, pending: list[tuple[Any, list[WorkUnit]]]) -> int:
    units = {u.unit_id: u for _, split_units in pending for u in split_units}
    return sum(layout.unit_tar(u).stat().st_size for u in units.values())


def _write_failed_units(layout: OutputLayout, failed: dict[str, str]) -> None:
    if failed:
        atomic_write_text(layout.failed_units, json.dumps(
            [{"unit": unit_id, "error": error} for unit_id, error in sorted(failed.items())], indent=2))
    else:
        layout.failed_units.unlink(missing_ok=True)


def _failure_summary(failed: dict[str, str], layout: OutputLayout) -> str:
    first_id, first_error = sorted(failed.items())[0]
    return (f"{len(failed)} unit(s) failed and are listed in {layout.failed_units} (first: {first_id}: {first_error}); "
            "every other unit is finished. Fix the cause and rerun with the same --out to retry just those units")


def run_context(config: RunConfig) -> RunContext:
    return RunContext(run_seed=config.seed, provenance=record_provenance(),
                      models={name: config.models[name].identity() for name in config.models_in_use()},
                      model_specs={name: config.models[name].model_dump(mode="json") for name in config.models_in_use()})


def check_stages_build(config: RunConfig, context: RunContext) -> None:
    """Build every CPU stage once on the driver: a stage that cannot be built fails here with its name, not as
    Ray workers dying on every unit. A stage with its own model is built only in its actors, where its model and
    GPUs are (building it here would load the model on the driver)."""
    import_plugins(config.plugins)
    for index, spec in enumerate(config.stages):
        if spec.stage_class().uses_model:
            continue
        try:
            spec.stage_class()(spec.stage_id, spec.typed_params(), context)
        except Exception as error:
            raise ConfigError(f"stages.{index} ({spec.stage_id!r}, {spec.name}) cannot be built: "
                              f"{type(error).__name__}: {error}") from error


def _preflight(config: RunConfig) -> None:
    problems = preflight_problems(config.stages, ClusterResources.from_ray(),
                                  {name: config.models[name] for name in config.models_in_use()})
    if problems:
        raise ResourcesUnavailable("the cluster cannot run this config:\n  " + "\n  ".join(problems))


@contextlib.contextmanager
def _exclusive_lock(root: Path) -> Iterator[None]:
    """One run per output folder; the kernel releases the lock if the run is killed."""
    with open(root / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another run is writing to {root}; wait for it or choose another --out") from None
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def _check_same_dataset(layout: OutputLayout, config: RunConfig) -> None:
    """Refuse to resume into a folder made by a config that would produce different data."""
    if not layout.config.is_file():
        return
    previous = data_fields(yaml.safe_load(layout.config.read_text()) or {})
    changed = differing_fields(previous, config.data_fields())
    if changed:
        raise ConfigError(
            f"{layout.root} holds a dataset made with a different config (fields differ: {', '.join(changed)}); "
            "use another --out, or delete the folder to start over"
        )


def run_versions(config: RunConfig) -> dict[str, Any]:
    """What could make the same config give other data: package versions and each stage's code version."""
    return {"packages": package_versions(),
            "stages": {s.stage_id: f"{s.name} {s.stage_class().version}" for s in config.stages},
            "models": {name: config.models[name].identity() for name in config.models_in_use()}}


def _check_versions(layout: OutputLayout, config: RunConfig, allow_change: bool) -> None:
    current = run_versions(config)
    if layout.run_info.is_file() and not allow_change:
        previous = read_json(layout.run_info)
        changed = differing_fields(previous, current)
        if changed:
            details = ", ".join(f"{path}: {_lookup(previous, path)} -> {_lookup(current, path)}" for path in changed)
            raise ConfigError(
                f"{layout.root} was made with other versions ({details}); resuming would mix data made by "
                "different code. Use another --out, or pass --allow-version-change to resume anyway")
    atomic_write_text(layout.run_info, json.dumps(current, indent=2, sort_keys=True))


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data
