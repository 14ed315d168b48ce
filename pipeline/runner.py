"""`fusion synth`: plan work units, skip complete ones, run the rest, then index and describe the dataset."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from pipeline.config import ConfigError, RunConfig, save_config
from pipeline.execution import run_units_locally, run_units_on_ray
from pipeline.fileio import remove_stale_temp_files
from pipeline.manifest import planned_units, write_index
from pipeline.provenance import record_provenance
from pipeline.ray_session import ray_session
from pipeline.shards import OutputLayout
from pipeline.stage import RunContext
from pipeline.units import WorkUnit

logger = logging.getLogger(__name__)


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


def synthesize(config: RunConfig, out_dir: Path, address: str | None = None, use_ray: bool = True) -> SynthesisResult:
    """Synthesize the dataset of ``config`` into ``out_dir``; rerunning resumes where a killed run stopped."""
    from pipeline.card import write_card

    layout = OutputLayout(Path(out_dir))
    layout.root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(layout.root):
        _check_same_dataset(layout, config)
        save_config(config, layout.config)
        for path in remove_stale_temp_files(layout.root):
            logger.info("removed partial file of an interrupted run: %s", path)

        units = planned_units(config)
        todo = [u for u in units if not layout.is_complete(u)]
        if len(todo) < len(units):
            logger.info("resuming: %d of %d units already complete", len(units) - len(todo), len(units))
        context = RunContext(run_seed=config.seed, jpeg_quality=config.dataset.jpeg_quality, provenance=record_provenance())
        busy_seconds = 0.0
        if todo:
            already_done = sum(u.num_samples for u in units) - sum(u.num_samples for u in todo)
            start = time.perf_counter()
            busy_seconds = _run_units(config, todo, layout, context, address, use_ray, already_done)
            run_seconds = time.perf_counter() - start
            logger.info("%d units in %.1f s; workers busy %.1f s (%.2f units of work at once on average)",
                        len(todo), run_seconds, busy_seconds, busy_seconds / max(run_seconds, 1e-9))
        manifest = write_index(layout, config)
        write_card(layout.root)
    return SynthesisResult(layout.root, manifest, units_run=len(todo), units_skipped=len(units) - len(todo),
                           busy_seconds=busy_seconds)


def _run_units(
    config: RunConfig,
    todo: list[WorkUnit],
    layout: OutputLayout,
    context: RunContext,
    address: str | None,
    use_ray: bool,
    already_done: int,
) -> float:
    """Run the units with a progress bar; returns the workers' busy seconds."""
    total = already_done + sum(u.num_samples for u in todo)
    progress = tqdm(total=total, initial=already_done, unit="sample", desc="synthesize", disable=not config.ray.progress,
                    smoothing=0.1)
    accepted = rejected = 0
    busy = 0.0
    with progress, (ray_session(config.ray, address) if use_ray else contextlib.nullcontext()):
        completed = (run_units_on_ray if use_ray else run_units_locally)(config, todo, layout, context)
        for stats in completed:
            accepted += stats["count"]
            rejected += stats["rejected"]
            busy += stats["busy_seconds"]
            progress.update(stats["count"] + stats["rejected"])
            progress.set_postfix(accepted=accepted, rejected=rejected, refresh=False)
    return busy


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
    previous = yaml.safe_load(layout.config.read_text()) or {}
    for field in ("ray", "train"):
        previous.pop(field, None)
    current = config.data_fields()
    if previous != current:
        changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        raise ConfigError(
            f"{layout.root} holds a dataset made with a different config (fields differ: {', '.join(changed)}); "
            "use another --out, or delete the folder to start over"
        )
