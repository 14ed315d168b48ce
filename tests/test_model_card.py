"""CARD: tile stitching, latent initialisation, window indexing, interaction hooks that touch only latents."""

from __future__ import annotations

import pytest
import torch

from model.card import (
    CardContext,
    InteractionLayer,
    initial_latents,
    latent_windows,
    pool_map,
    stitch_tiles,
)
from model.config import ConfigError
from tests.tiny_models import IMAGE_CONVERSATION, TEXT_CONVERSATION, make_image


def coordinate_map(height: int, width: int) -> torch.Tensor:
    """(1, H, W, 2) map whose features are the (row, col) of each cell."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([rows, cols], dim=-1).float()[None]


def test_stitch_places_row_major_tiles_in_their_quadrants():
    side, width = 3, 2
    tiles = torch.stack([torch.full((side * side, width), float(k)) for k in range(8)])  # 2 images x 4 tiles
    stitched = stitch_tiles(tiles, tile_grid=2)
    assert stitched.shape == (2, 6, 6, width)
    for image in range(2):
        for k, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            block = stitched[image, r * side : (r + 1) * side, c * side : (c + 1) * side]
            assert torch.all(block == image * 4 + k)
    # within a tile, token order is row-major
    ordered = torch.arange(9, dtype=torch.float32).view(9, 1).repeat(1, 2)[None].repeat(4, 1, 1)
    assert torch.equal(stitch_tiles(ordered, 2)[0, :3, :3, 0], torch.arange(9.0).view(3, 3))


@pytest.mark.parametrize(("latent_count", "window"), [(4, 3), (16, 3), (4, 2), (1, 3)])
def test_each_latent_reads_its_own_window_of_the_pooled_map(latent_count, window):
    q = int(latent_count**0.5)
    side = q * window
    windows = latent_windows(coordinate_map(side, side), latent_count, window)  # pooling is the identity here
    assert windows.shape == (1, latent_count, window * window, 2)
    for latent in range(latent_count):
        r, c = divmod(latent, q)
        expected = {(window * r + i, window * c + j) for i in range(window) for j in range(window)}
        got = {tuple(int(v) for v in cell) for cell in windows[0, latent]}
        assert got == expected, f"latent {latent} (row {r}, col {c})"


def test_windows_and_latents_are_max_pools_of_the_tile_map():
    tile_map = torch.randn(2, 8, 8, 5)
    pooled = pool_map(tile_map, 6)  # 3q x 3q for Q = 4
    windows = latent_windows(tile_map, 4, 3)
    assert torch.equal(windows[:, 3].reshape(2, 3, 3, 5), pooled[:, 3:6, 3:6])  # latent (1, 1)
    latents = initial_latents(tile_map, 4)
    assert torch.equal(latents[:, 0], tile_map[:, :4, :4].amax(dim=(1, 2)))
    assert torch.equal(latents[:, 3], tile_map[:, 4:, 4:].amax(dim=(1, 2)))
    with pytest.raises(ConfigError, match="Q=8 is not a perfect square"):
        initial_latents(tile_map, 8)


def test_interaction_layer_has_about_nine_d_squared_parameters():
    width = 96
    layer = InteractionLayer(width, num_heads=16)
    assert sum(p.numel() for p in layer.parameters()) == 9 * width * width + 6 * width  # + 3 LayerNorms
    with pytest.raises(ConfigError, match="num_heads=5"):
        InteractionLayer(width, num_heads=5)


def test_interaction_changes_only_latent_positions(tiny_model):
    torch.manual_seed(0)
    card = tiny_model.card
    hidden = torch.randn(2, 12, 64)
    context = CardContext(
        latent_positions=torch.tensor([[2, 3, 4, 5], [6, 7, 8, 9]]),
        latent_rows=torch.tensor([0, 1]),
        question_end_positions=torch.tensor([10, 11]),
        windows=torch.randn(2, 4, 9, 64),
        block_images=torch.tensor([1, 0]),
    )
    updated = card.apply_layer(0, hidden, context)
    changed = (updated != hidden).any(dim=-1)
    expected = torch.zeros(2, 12, dtype=torch.bool)
    expected[0, 2:6] = True
    expected[1, 6:10] = True
    assert torch.equal(changed, expected)

    wrong_window = CardContext(**{**vars(context), "windows": torch.randn(2, 4, 4, 64)})  # 2x2 windows, config 3x3
    with pytest.raises(ValueError, match="card.window_size=3"):
        card.apply_layer(0, hidden, wrong_window)


def test_hooks_on_stock_decoder_layers_touch_only_latents_and_only_in_prefill(tiny_model):
    """After the first hooked decoder layer, only latent positions differ from the plain decoder."""
    tiny_model.eval()
    builder = tiny_model.sequence_builder
    batch = builder.collate([(make_image(0), IMAGE_CONVERSATION), (None, TEXT_CONVERSATION)], latent_count=4)
    layers = tiny_model.language_model.model.layers
    hooked_index = tiny_model.card.after_layers[0]
    seen: list[torch.Tensor] = []
    probe = layers[hooked_index].register_forward_hook(lambda m, a, output: seen.append(output.detach()))
    try:
        with torch.no_grad():
            embeddings, context, _ = tiny_model.prepare_inputs(batch, compute_dsm=False)
            run = dict(inputs_embeds=embeddings, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
            with tiny_model.card_context(context):
                tiny_model.language_model(**run)
            tiny_model.language_model(**run)  # no context: the stock decoder, untouched
            with tiny_model.card_context(CardContext(**{**vars(context), "prefill": False})):
                tiny_model.language_model(**run)  # an explicit non-prefill context is untouched too
    finally:
        probe.remove()
    with_card, plain, not_prefill = seen
    changed = (with_card != plain).any(dim=-1)
    expected = torch.zeros_like(changed)
    expected[batch.latent_rows[:, None], batch.latent_positions] = True
    assert expected.sum() == 8 and torch.equal(changed, expected)
    assert torch.equal(plain, not_prefill)
    assert tiny_model.card._context is None


def test_context_is_cleared_even_when_the_forward_fails(tiny_model, monkeypatch):
    builder = tiny_model.sequence_builder
    batch = builder.collate([(make_image(0), IMAGE_CONVERSATION)], latent_count=4)

    def failing_interaction(*args, **kwargs):
        assert tiny_model.card._context is not None  # the hook saw this forward's context
        raise RuntimeError("interaction failed")

    monkeypatch.setattr(tiny_model.card.layers[1], "forward", failing_interaction)
    with pytest.raises(RuntimeError, match="interaction failed"):
        tiny_model(batch)
    assert tiny_model.card._context is None


def test_a_deep_copy_runs_its_own_interaction_layers(tiny_model):
    import copy

    tiny_model.eval()
    twin = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for parameter in twin.card.parameters():
            parameter.add_(0.5)  # only the copy's interaction layers change
    batch = tiny_model.sequence_builder.collate([(make_image(0), IMAGE_CONVERSATION)], latent_count=4)
    with torch.no_grad():
        original, copied = tiny_model(batch).logits, twin(batch).logits
        again = tiny_model(batch).logits
    assert not torch.allclose(original, copied, atol=1e-4)  # the copy's hooks use the copy's layers
    assert torch.equal(original, again)  # and the original is untouched
