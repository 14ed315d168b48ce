"""Connects to the Ray cluster a run names, or starts an embedded local Ray bound to loopback."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from pipeline.config import RayConfig

logger = logging.getLogger(__name__)


def resolve_address(config: RayConfig, address: str | None) -> str | None:
    """CLI ``--address`` wins over the config, which wins over ``RAY_ADDRESS``; None means embedded."""
    return address or config.address or os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def ray_session(config: RayConfig, address: str | None = None) -> Iterator[None]:
    import ray

    if ray.is_initialized():
        yield
        return
    target = resolve_address(config, address)
    if target:
        logger.info("connecting to Ray cluster at %s", target)
        ray.init(address=target, log_to_driver=True)
    else:
        # Keep every listener of the local Ray on loopback; it otherwise binds the machine's interface.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        logger.info("starting an embedded local Ray (%s CPUs)", config.num_cpus or "all")
        ray.init(
            num_cpus=config.num_cpus,
            num_gpus=config.num_gpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=config.temp_dir,
            log_to_driver=True,
        )
    try:
        yield
    finally:
        ray.shutdown()
