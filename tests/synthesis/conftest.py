"""Fixtures for the synthesis tests: one embedded Ray and one small synthesized dataset per session."""

import shutil
import tempfile
from pathlib import Path

import pytest

from pipeline.config import RunConfig, load_config

FAMILIES = ("SynthColor", "SynthCount", "SynthSpatial", "SynthText", "SynthMultiChoice", "SynthConvShort",
            "SynthContrastShort")
# Every family, both splits, several shards each, including a short last shard.
SMALL_OVERRIDES = ["dataset.unit_size=5", "dataset.shard_size=5", "ray.progress=false"] + [
    f"categories.{family}={{train: 12, test: 4}}" for family in FAMILIES
]


def small_config(*overrides: str) -> RunConfig:
    return load_config("demo", [*SMALL_OVERRIDES, *overrides])


@pytest.fixture(scope="session")
def local_ray():
    """An embedded Ray on loopback shared by the tests; synthesize() reuses an initialised Ray.

    It declares two GPUs this machine does not have: Ray schedules by declared resources, so GPU pools and
    tensor-parallel placement groups are exercised for real; no stage here touches CUDA."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must stay under 108 bytes
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=temp_dir,
             log_to_driver=False)
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def synth_output(local_ray, tmp_path_factory) -> Path:
    from pipeline.synthesis import synthesize

    out = tmp_path_factory.mktemp("dataset") / "small"
    synthesize(small_config(), out)
    return out
