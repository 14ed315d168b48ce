"""Training checkpoints: weights + optimizer + scheduler + step + RNG states + loader positions, written atomically.

    OUT/checkpoints/step-00000100/
        config.json, model.safetensors (or DCP safetensors shards), tokenizer/   <- FusionModel.from_pretrained
        optimizer.pt (or optimizer/ under FSDP)
        rng/rank-00000.pt ...                 python, numpy, torch (and CUDA) generator states of every rank
        trainer_state.json                    step, scheduler, counters, every rank's loader position; written last
    OUT/checkpoints/latest                    the name of the newest complete checkpoint

Everything is written into `step-N.tmp-<id>/` and renamed when every rank is done, so a crash leaves either a
complete checkpoint or a temporary folder that is ignored (and removed by the next save).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.fileio import atomic_write_text
from train.distributed import DistInfo, Strategy, barrier, broadcast_object, gather_objects

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer_state.json"
RNG_DIR = "rng"
PREFIX = "step-"
TEMP = ".tmp-"


@dataclass
class TrainerState:
    step: int = 0
    total_steps: int = 0
    samples: int = 0
    tokens: int = 0
    scheduler: dict[str, Any] = field(default_factory=dict)
    loader: list[dict[str, Any]] = field(default_factory=list)  # one position per rank
    world_size: int = 1
    strategy: str = "single"
    config_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        return cls(**data)


def step_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out: Path, *, info: DistInfo, strategy: Strategy, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, state: TrainerState, loader_position: dict[str, Any],
                    keep: int) -> Path:
    """Every rank calls this; returns the final checkpoint folder."""
    root = out / CHECKPOINTS_DIR
    name = step_name(state.step)
    temp = root / f"{name}{TEMP}{broadcast_object(uuid.uuid4().hex[:8])}"
    if info.is_main:
        temp.mkdir(parents=True, exist_ok=True)
    barrier()
    strategy.save_model(model, temp)
    strategy.save_optimizer(model, optimizer, temp)
    positions = gather_objects(loader_position)
    rngs = gather_objects(rng_state())
    if info.is_main:
        (temp / RNG_DIR).mkdir(exist_ok=True)
        for rank, rng in enumerate(rngs):
            torch.save(rng, temp / RNG_DIR / f"rank-{rank:05d}.pt")
        state.loader = positions
        atomic_write_text(temp / STATE_FILE, json.dumps(state.to_dict(), indent=2))
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        temp.rename(final)
        atomic_write_text(root / LATEST, name + "\n")
        _prune(root, keep)
        logger.info("checkpoint %s written", final)
    barrier()
    return root / name


def _prune(root: Path, keep: int) -> None:
    complete = completed_checkpoints(root)
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(f"{PREFIX}*{TEMP}*"):
        shutil.rmtree(stale, ignore_errors=True)


def completed_checkpoints(root: Path) -> list[Path]:
    found = [p for p in root.glob(f"{PREFIX}*") if TEMP not in p.name and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def resolve_checkpoint(out: Path, resume: str) -> Path | None:
    """`latest` (None when there is none yet), a step folder name, or a path."""
    root = out / CHECKPOINTS_DIR
    if resume == "latest":
        pointer = root / LATEST
        if pointer.is_file():
            candidate = root / pointer.read_text().strip()
            if (candidate / STATE_FILE).is_file():
                return candidate
        complete = completed_checkpoints(root) if root.is_dir() else []
        return complete[-1] if complete else None
    path = Path(resume)
    candidate = path if path.is_absolute() or path.exists() else root / resume
    if not (candidate / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: {candidate} is not a complete checkpoint (no {STATE_FILE})")
    return candidate


def checkpoint_folder(path: str | Path) -> Path:
    """What `fusion evaluate --checkpoint` may name: a checkpoint or model folder, the `latest` pointer file, a
    checkpoints folder or a training run folder (its newest complete checkpoint)."""
    path = Path(path)
    if path.is_file() and path.name == LATEST:
        return path.parent / path.read_text().strip()
    if (path / "config.json").is_file():
        return path
    run = path.parent if path.name == CHECKPOINTS_DIR else path
    if (run / CHECKPOINTS_DIR).is_dir():
        newest = resolve_checkpoint(run, "latest")
        if newest is None:
            raise FileNotFoundError(f"{path}: the run has no complete checkpoint yet")
        return newest
    return path


def load_checkpoint(directory: Path, *, info: DistInfo, strategy: Strategy, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> TrainerState:
    state = TrainerState.from_dict(json.loads((directory / STATE_FILE).read_text()))
    if state.world_size != info.world_size:
        raise ValueError(f"checkpoint {directory} was written by {state.world_size} ranks; this run has "
                         f"{info.world_size}: resume with the same number of ranks")
    strategy.load_model(model, directory)
    strategy.load_optimizer(model, optimizer, directory)
    set_rng_state(torch.load(directory / RNG_DIR / f"rank-{info.rank:05d}.pt", weights_only=False))
    logger.info("resumed from %s at step %d", directory, state.step)
    return state
