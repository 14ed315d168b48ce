"""Fixtures for the synthesis tests: a small config and one small synthesized dataset per session."""

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
def synth_output(local_ray, tmp_path_factory) -> Path:
    from pipeline.synthesis import synthesize

    out = tmp_path_factory.mktemp("dataset") / "small"
    synthesize(small_config(), out)
    return out
