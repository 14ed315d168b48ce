"""Test-wide settings: everything offline, Ray kept on loopback with auth off, fixtures built once per session."""

import os

import pytest

# Must be set before Ray or Hugging Face libraries are imported anywhere in the session.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- FUSION model fixtures: tiny checkpoints built once per session ------------------------------------------------


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """name -> directory of the tiny tokenizer, causal LMs (llama, qwen2, phi3) and SigLIP towers."""
    from tests.tiny_models import build_all

    return build_all(tmp_path_factory.mktemp("tiny_checkpoints"))


@pytest.fixture(scope="session")
def tiny_fusion_config(tiny_checkpoints):
    """The fusion-tiny preset pointed at the tiny Llama, SigLIP and tokenizer directories."""
    from model.config import get_preset

    return get_preset("fusion-tiny").with_sources(
        language_model=str(tiny_checkpoints["llama"]),
        vision_tower=str(tiny_checkpoints["siglip"]),
        tokenizer=str(tiny_checkpoints["tokenizer"]),
    )


@pytest.fixture
def tiny_model(tiny_fusion_config):
    """A fresh tiny FUSION model (Llama + SigLIP, all components on) loaded from the tiny directories."""
    import torch

    from model.fusion import FusionModel

    torch.manual_seed(0)
    return FusionModel.from_config(tiny_fusion_config)
