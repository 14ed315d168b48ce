"""TUNE: the paper's early-layer mask, padding by explicit mask, and the multi-level connector input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.backbones import load_vision_tower
from model.config import VisionTowerConfig
from model.vision import TextGuidedVisionEncoder, vision_text_attention_masks

NUM_PATCHES = 16  # tiny SigLIP: 32 px, patch 8


def tiny_encoder(tiny_checkpoints, attn_implementation="sdpa", multi_level=True) -> TextGuidedVisionEncoder:
    tower = load_vision_tower(
        VisionTowerConfig(source=str(tiny_checkpoints["siglip"]), attn_implementation=attn_implementation)
    )
    return TextGuidedVisionEncoder(tower, early_layers=None, multi_level=multi_level).eval()


def capture_attention_weights(encoder):
    captured = []
    handles = [
        layer.self_attn.register_forward_hook(lambda module, args, output: captured.append(output[1].detach()))
        for layer in encoder.tower.encoder.layers
    ]
    return captured, handles


def test_attention_probe_vision_queries_ignore_text_only_in_early_layers(tiny_checkpoints):
    torch.manual_seed(0)
    encoder = tiny_encoder(tiny_checkpoints, attn_implementation="eager")
    assert encoder.early_layers == 2 and encoder.num_layers == 4
    pixels = torch.randn(2, 3, 32, 32)
    text = torch.randn(2, 5, 32)
    text_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    captured, handles = capture_attention_weights(encoder)
    with torch.no_grad():
        encoder(pixels, text, text_mask)
    for handle in handles:
        handle.remove()

    assert len(captured) == 4
    p = NUM_PATCHES
    for layer_index, weights in enumerate(captured):  # (B, heads, P+Lt, P+Lt)
        vision_to_text = weights[:, :, :p, p:]
        text_to_vision = weights[:, :, p:, :p]
        real_text_keys = text_mask[:, None, None, :].expand_as(vision_to_text)
        if layer_index < 2:
            assert torch.all(vision_to_text == 0), f"early layer {layer_index} lets vision see text"
        else:
            assert torch.all(vision_to_text[real_text_keys] > 0), f"late layer {layer_index} blocks text"
        # text still reads the image in every layer; padded text keys get no weight anywhere
        assert torch.all(text_to_vision.sum(-1) > 0)
        assert torch.all(weights[1, :, :, p + 3 :] == 0)
        # every query row is a proper distribution (no fully masked rows)
        assert torch.allclose(weights.sum(-1), torch.ones_like(weights.sum(-1)), atol=1e-5)


def test_mask_blocks_exactly_vision_rows_on_text_columns_in_early_layers():
    text_mask = torch.tensor([[True, False]])
    late, early = vision_text_attention_masks(3, text_mask, torch.float32)
    blocked = torch.finfo(torch.float32).min
    expected_late = torch.zeros(5, 5)
    expected_late[:, 4] = blocked
    expected_early = expected_late.clone()
    expected_early[:3, 3:] = blocked
    assert torch.equal(late[0, 0], expected_late) and torch.equal(early[0, 0], expected_early)


def test_text_only_pass_has_only_the_padding_mask_and_no_fully_masked_row(tiny_checkpoints):
    text_mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    late, early = vision_text_attention_masks(0, text_mask, torch.float32)
    assert late.shape == (2, 1, 5, 5) and torch.equal(late, early)  # no vision queries: padding only
    assert torch.all(late[0, 0, :, 3:] == torch.finfo(torch.float32).min) and torch.all(late[0, 0, :, :3] == 0)

    torch.manual_seed(0)
    encoder = tiny_encoder(tiny_checkpoints, attn_implementation="eager")
    text = torch.randn(2, 5, 32)
    captured, handles = capture_attention_weights(encoder)
    with torch.no_grad():
        features = encoder.encode_text(text, text_mask)
        alone = encoder.encode_text(text[:1, :3], text_mask[:1, :3])
    for handle in handles:
        handle.remove()
    assert features.shape == (2, 5, 3 * 32) and torch.isfinite(features).all()
    for weights in captured[:4]:  # (N, heads, Lt, Lt) of the padded call
        assert torch.allclose(weights.sum(-1), torch.ones_like(weights.sum(-1)), atol=1e-5)
        assert torch.all(weights[0, :, :, 3:] == 0)  # padded keys get no weight
    assert torch.allclose(features[0, :3], alone[0], atol=1e-5)  # padding changes nothing

    with pytest.raises(ValueError, match=r"text_mask rows \[1\] have no real token"):
        encoder.encode_text(text, torch.tensor([[True] * 5, [False] * 5]))


def test_padding_comes_from_the_mask_not_from_token_id_zero(tiny_model, tiny_checkpoints):
    """Id 0 is a real token in many vocabularies (Llama-3: '!'); only the mask marks padding."""
    builder = tiny_model.sequence_builder
    from tests.tiny_models import SHORT_IMAGE_CONVERSATION, make_image

    batch = builder.collate([(make_image(2), SHORT_IMAGE_CONVERSATION)], latent_count=1)
    extra = torch.full((1, 3), 0, dtype=torch.long)
    padded = dataclasses.replace(
        batch,
        vit_text_ids=torch.cat([batch.vit_text_ids, extra + 7], dim=1),  # arbitrary pad ids
        vit_text_mask=torch.cat([batch.vit_text_mask, torch.zeros(1, 3, dtype=torch.bool)], dim=1),
    )
    with_zero_tokens = dataclasses.replace(
        batch,
        vit_text_ids=torch.cat([batch.vit_text_ids, extra], dim=1),  # id 0 as real text
        vit_text_mask=torch.cat([batch.vit_text_mask, torch.ones(1, 3, dtype=torch.bool)], dim=1),
    )
    tiny_model.eval()
    with torch.no_grad():
        reference = tiny_model.encode_images(batch, compute_dsm=False).image_tokens
        masked = tiny_model.encode_images(padded, compute_dsm=False).image_tokens
        attended = tiny_model.encode_images(with_zero_tokens, compute_dsm=False).image_tokens
    assert torch.allclose(reference, masked, atol=1e-5)  # masked padding changes nothing, whatever its id
    assert not torch.allclose(reference, attended, atol=1e-4)  # id 0 marked real is read by the image


def test_multi_level_connector_is_last_then_early_mean_then_late_mean(tiny_checkpoints):
    torch.manual_seed(1)
    encoder = tiny_encoder(tiny_checkpoints)
    pixels = torch.randn(2, 3, 32, 32)
    inputs = []
    handles = [
        layer.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach()))
        for layer in encoder.tower.encoder.layers
    ]
    with torch.no_grad():
        encoding = encoder(pixels)
    for handle in handles:
        handle.remove()
    assert encoding.features.shape == (2, NUM_PATCHES, 3 * 32)
    last, early, late = encoding.features.split(32, dim=-1)
    assert torch.allclose(early, (inputs[0] + inputs[1]) / 2, atol=1e-6)  # h_0, h_1
    assert torch.allclose(late, (inputs[2] + inputs[3]) / 2, atol=1e-6)  # h_2, h_3
    with torch.no_grad():
        expected_last = encoder.tower.encoder.layers[3](inputs[3], None)
    assert torch.allclose(last, expected_last, atol=1e-6)  # h_4, before any post-norm
    assert torch.equal(encoding.patch_embeddings, inputs[0])

    single = tiny_encoder(tiny_checkpoints, multi_level=False)
    assert single.output_size == 32 and single(pixels).features.shape == (2, NUM_PATCHES, 32)


def test_siglip2_naflex_tower_encodes_with_text(tiny_checkpoints):
    tower = load_vision_tower(VisionTowerConfig(source=str(tiny_checkpoints["siglip2"])))
    encoder = TextGuidedVisionEncoder(tower, early_layers=1, multi_level=True)
    encoding = encoder(torch.randn(3, 3, 32, 32), torch.randn(3, 2, 32), torch.ones(3, 2, dtype=torch.bool))
    assert encoding.features.shape == (3, NUM_PATCHES + 2, 96)
    assert encoding.patch_embeddings.shape == (3, NUM_PATCHES, 32)
    with pytest.raises(ValueError, match="tune.early_layers=4"):
        TextGuidedVisionEncoder(tower, early_layers=4, multi_level=True)
