"""The training loop inside Ray Train: `TorchTrainer` starts the workers, sets up their torch process group (gloo
on CPU, NCCL on GPU) and calls `train.trainer.train` on each, exactly as torchrun would."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from pipeline.console_logging import configure_logging
from train.checkpoint import STATE_FILE, resolve_checkpoint

logger = logging.getLogger(__name__)


def _worker_loop(settings: dict[str, Any]) -> None:
    import ray.train

    from train.config import load_train_config
    from train.trainer import train

    configure_logging()
    config = load_train_config(settings["config"], settings["overrides"])
    result = train(config, Path(settings["out"]), data=settings["data"], resume=settings["resume"],
                   stop_after=settings["stop_after"])
    ray.train.report({"steps": result.steps, "total_steps": result.total_steps, "checkpoint": str(result.checkpoint)})


def train_on_ray(*, config: str, overrides: list[str], data: str | None, out: Path, resume: str | None,
                 stop_after: int | None, num_workers: int, gpus_per_worker: float, cpus_per_worker: float
                 ) -> dict[str, Any]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = Path(out).resolve()
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=True)  # a submitted job joins its cluster
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": config, "overrides": list(overrides), "data": data, "out": str(out),
                           "resume": resume, "stop_after": stop_after},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(name="fusion-train", storage_path=str(out / "ray_train")),
    )
    logger.info("Ray Train: %d workers, %s each", num_workers, resources)
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"Ray Train failed: {result.error}")
    # The run folder, not Ray's result, is the record: it holds what a resumed run would continue from.
    checkpoint = resolve_checkpoint(out, "latest")
    if checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a checkpoint in {out}")
    state = json.loads((checkpoint / STATE_FILE).read_text())
    return {"steps": state["step"], "total_steps": state["total_steps"], "checkpoint": str(checkpoint)}
