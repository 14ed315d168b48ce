"""The model-backed presets load as typed configs, name models by path or Hub id, and reserve what they say."""

import pytest

from pipeline.config import load_config

PRESETS = ["synth-tiny-models", "synth-smollm2", "synth-1gpu", "synth-paper"]


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_share_one_llm_across_the_llm_steps(name):
    config = load_config(name)
    assert config.models_in_use() == ["llm", "diffusion"]
    users = {s.stage_id: s.stage_class().models_used(s.typed_params()) for s in config.stages}
    assert users["llm_description"] == users["llm_qa"] == ["llm"]
    llm = config.models["llm"]
    if llm.backend == "vllm":
        assert llm.typed_params().tensor_parallel_size == llm.resources.tensor_parallel_size


def test_the_paper_preset_reserves_tensor_parallel_replicas():
    config = load_config("synth-paper")
    assert config.models["llm"].resources.gpus_reserved == 4 and config.models["llm"].resources.replicas == 2
    assert set(config.categories) == {"SynthColor", "SynthCount", "SynthSpatial", "SynthText", "SynthScene",
                                      "SynthMultiChoice", "SynthConvShort", "SynthConvLong", "SynthReasoning",
                                      "SynthTextQA", "SynthContrastShort", "SynthContrastLong"}
