"""Fixtures for the model-backed synthesis tests: the tiny models loaded once per session through the real
backends, and the synth-tiny-models preset pointed at the session's tiny model folders."""

import pytest

from pipeline.config import RunConfig, load_config

# Random models write noise: the preset loosens the family limits; these keep runs small and quiet.
SMALL_RUN = ["ray.progress=false", "dataset.unit_size=4", "dataset.shard_size=4"]


def tiny_models_config(models: dict, *overrides: str, preset: str = "synth-tiny-models") -> RunConfig:
    """The preset with its model paths pointed at ``models`` (the ``tiny_synthesis_models`` fixture)."""
    paths = [f"models.llm.params.path={models['llm']}", f"models.diffusion.params.path={models['diffusion']}"]
    return load_config(preset, [*SMALL_RUN, *paths, *overrides])


@pytest.fixture(scope="session")
def tiny_llm(tiny_synthesis_models):
    from generators.llm.transformers_backend import TransformersLLM

    return TransformersLLM(TransformersLLM.Params(path=str(tiny_synthesis_models["llm"]), device="cpu",
                                                  cpu_threads=1))


@pytest.fixture(scope="session")
def tiny_diffusion(tiny_synthesis_models):
    from generators.diffusion.diffusers_backend import DiffusersBackend

    return DiffusersBackend(DiffusersBackend.Params(path=str(tiny_synthesis_models["diffusion"]), device="cpu",
                                                    cpu_threads=1, num_inference_steps=2, guidance_scale=1.0,
                                                    height=32, width=32))
