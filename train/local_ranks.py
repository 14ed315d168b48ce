"""`local_ranks: N`: a training command starts N data-parallel ranks on this machine itself, as torchrun would.

On a CPU a small model's step keeps two torch threads only partly busy (many small ops): on 2 cores with the demo
model, two ranks of one thread each did 1.2-1.4x the steps per second of one process with two threads
(benchmarks/local_ranks.py). The ranks run DDP on gloo (NCCL on GPUs), each with its share of the threads, through
torch's own elastic launcher (the code behind torchrun), on loopback.

The warm-ups are not data-parallel (every rank would run all of them), so they run once here, before the ranks
start, and the ranks start from the warmed model (`OUT/warm-start/`, kept until the training ends so a crash before
the first checkpoint does not redo them).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import torch
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from pipeline.console_logging import configure_logging
from train.config import TrainConfig

logger = logging.getLogger(__name__)

WARM_START_DIR = "warm-start"


def train_on_local_ranks(config: TrainConfig, out: Path, *, data: str | None, resume: str | None,
                         stop_after: int | None):
    from train.trainer import warm_start_model

    started = time.perf_counter()
    ranks = config.local_ranks
    warm_start = warm_start_model(config, out, data=data, resume=resume, folder=out / WARM_START_DIR)
    threads = max(1, torch.get_num_threads() // ranks)
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo may pick an interface ranks cannot reach
    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=ranks, run_id=f"fusion-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0,
                          start_method="spawn", monitor_interval=0.5, local_addr="127.0.0.1")
    logger.info("training on %d local ranks, %d torch thread(s) each", ranks, threads)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)  # the launcher's own chatter
    # Read by each rank's OpenMP runtime as it starts (as torchrun does): with torch.set_num_threads alone a demo step
    # took 0.57 s instead of 0.49 s on 2 cores.
    omp_unset = "OMP_NUM_THREADS" not in os.environ
    if omp_unset:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        results = elastic_launch(launch, _rank_main)(config, out, data, resume, stop_after, warm_start, threads,
                                                     logging.getLogger().level)
    finally:
        if omp_unset:
            del os.environ["OMP_NUM_THREADS"]
    if warm_start is not None:
        shutil.rmtree(warm_start, ignore_errors=True)
    return dataclasses.replace(results[0], seconds=time.perf_counter() - started)  # the warm-ups' time included


def _rank_main(config: TrainConfig, out: Path, data: str | None, resume: str | None, stop_after: int | None,
               warm_start: Path | None, threads: int, log_level: int):
    from train.trainer import train

    configure_logging(log_level)  # a spawned rank starts without the command's logging
    torch.set_num_threads(threads)
    return train(config, out, data=data, resume=resume, stop_after=stop_after, warm_start=warm_start)
