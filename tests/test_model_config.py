"""FUSION config: presets, every paper number as a field, JSON round trip, and errors that name the culprit."""

from __future__ import annotations

import dataclasses

import pytest
import safetensors.torch
import torch
from torch import nn

from model.backbones import BackboneError, decoder_layers, load_language_model, load_vision_tower
from model.card import CardInteraction
from model.config import PRESETS, ConfigError, FusionConfig, LanguageModelConfig, VisionTowerConfig, get_preset


def test_unknown_preset_error_lists_known_names():
    with pytest.raises(KeyError) as error:
        get_preset("fusion-13b")
    message = str(error.value)
    assert "fusion-13b" in message
    for name in ("fusion-3b", "fusion-8b", "fusion-x-3b", "fusion-x-8b", "fusion-l-3b", "fusion-l-8b",
                 "fusion-tiny", "fusion-smollm2-tiny"):
        assert name in PRESETS and name in message


def test_paper_numbers_are_config_fields():
    config = get_preset("fusion-3b")
    assert config.image.tile_grid == 2 and config.image.image_size == 384
    assert config.card.latent_counts == (4, 16, 36, 64, 144)
    assert config.card.eval_latent_count == 64
    assert config.card.window_size == 3
    assert config.card.interaction_after_layers() == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    assert config.card.num_heads == 16
    assert config.dsm_weight == 0.1
    assert config.tune.vit_text_max_tokens == 128
    assert config.tune.early_layers is None  # half of the kept ViT blocks
    assert config.vision_tower.drop_last_layers == 1
    assert config.inference_image_grid is None
    assert get_preset("fusion-l-8b").inference_image_grid == 16
    assert get_preset("fusion-x-8b").vision_tower.architecture["hidden_size"] == 1536
    assert get_preset("fusion-8b").language_model.architecture["num_key_value_heads"] == 8


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_json(name, tmp_path):
    config = get_preset(name)
    path = tmp_path / "config.json"
    config.to_json(path)
    assert FusionConfig.from_json(path) == config


@pytest.mark.parametrize(
    ("change", "field_named"),
    [
        (lambda c: dataclasses.replace(c.card, latent_counts=(4, 10)), "not a perfect square"),
        (lambda c: dataclasses.replace(c.card, eval_latent_count=12), "not a perfect square"),
        (lambda c: dataclasses.replace(c.card, window_size=0), "card.window_size"),
    ],
)
def test_invalid_card_values_are_rejected(change, field_named):
    config = get_preset("fusion-tiny")
    with pytest.raises(ConfigError, match=field_named):
        config.replace(card=change(config))


def test_dsm_without_tune_and_unknown_fields_are_rejected():
    config = get_preset("fusion-tiny")
    with pytest.raises(ConfigError, match="dsm_weight"):
        config.replace(use_tune=False)
    data = config.to_dict()
    data["card"]["window"] = 3
    with pytest.raises(ConfigError, match=r"card\.: unknown field\(s\) \['window'\]"):
        FusionConfig.from_dict(data)


def test_interaction_layers_beyond_the_decoder_depth_are_rejected():
    card = dataclasses.replace(get_preset("fusion-3b").card)
    with pytest.raises(ConfigError, match="only 8 layers"):
        CardInteraction(hidden_size=64, config=card, num_decoder_layers=8)


def test_backbone_errors_name_the_field_and_model(tmp_path, tiny_checkpoints):
    with pytest.raises(BackboneError, match="language_model.source: model directory .*missing"):
        load_language_model(LanguageModelConfig(source=str(tmp_path / "missing")))
    with pytest.raises(BackboneError, match="not a SigLIP vision model"):
        load_vision_tower(VisionTowerConfig(source=str(tiny_checkpoints["llama"])))
    with pytest.raises(BackboneError, match="Linear has no `model.layers`"):
        decoder_layers(nn.Linear(2, 2))
    with pytest.raises(BackboneError, match="package 'not_a_real_weights_package' is not installed"):
        load_language_model(LanguageModelConfig(python_package="not_a_real_weights_package"))
    with pytest.raises(BackboneError, match="leaves no block"):
        load_vision_tower(VisionTowerConfig(source=str(tiny_checkpoints["siglip"]), drop_last_layers=5))


def test_vision_tower_loads_from_a_full_siglip_checkpoint(tiny_checkpoints):
    """Hub SigLIP repositories hold text + vision; only the vision part is loaded, minus its last block."""
    directory = tiny_checkpoints["siglip_full"]
    tower = load_vision_tower(VisionTowerConfig(source=str(directory)))
    assert len(tower.encoder.layers) == 4
    assert not hasattr(tower, "head") and isinstance(tower.post_layernorm, nn.Identity)
    saved = safetensors.torch.load_file(directory / "model.safetensors")
    loaded = tower.state_dict()
    assert loaded, "tower has no parameters"
    for name, tensor in loaded.items():
        assert torch.equal(tensor, saved[f"vision_model.{name}"]), name
