"""Test-wide settings: everything offline, Ray kept on loopback with auth off, fixtures built once per session."""

import os
import shutil
import tempfile

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


# --- synthesis fixtures: one embedded Ray and the tiny synthesis models, once per session -------------------------


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
def tiny_synthesis_models(tmp_path_factory):
    """name -> folder of the tiny LLM, diffusion pipeline and open_clip model (`fusion make-tiny-models`)."""
    from generators.tiny_models import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny_synthesis_models"))
