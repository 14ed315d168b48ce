"""Context-aware recursive alignment decoding (CARD).

Each question turn gets a block of Q = q*q latent tokens placed before its question. The latents start as an
adaptive max pool of the stitched high-resolution tile map; each latent (r, c) owns the window rows
w*r..w*r+w-1, cols w*c..w*c+w-1 of the same map pooled to (w*q) x (w*q). After selected stock decoder layers an
interaction layer rewrites the latent positions of the residual stream:

    u     = W_in [h_question_end ; z]
    a     = W_o MHA(LN(u), LN(W_ctx window), LN(W_ctx window))        one query against w*w keys
    z_new = z + W_2 GELU(W_1 LN(a + u))

The interaction runs through forward hooks on the stock decoder layers. The hooks read an explicit per-forward
`CardContext` that exists only inside `CardInteraction.active(...)`, and only act during prefill.

FSDP2-safe by construction: every parameter of an interaction layer is used inside that layer's own `forward`
(gather, window keys/values, update and scatter), so `fully_shard` on each interaction layer unshards exactly
what is used. A context may be a zero-weighted placeholder (`CardContext.placeholder`): the layer then runs on
dummy latents and adds nothing, so every rank runs the same modules whatever its batch holds.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.config import CardConfig, ConfigError, is_perfect_square


def latent_side(latent_count: int) -> int:
    if not is_perfect_square(latent_count):
        raise ConfigError(f"latent count Q={latent_count} is not a perfect square")
    return math.isqrt(latent_count)


def stitch_tiles(tile_tokens: torch.Tensor, tile_grid: int) -> torch.Tensor:
    """(N * g*g, s*s, D) tile tokens, tiles row-major per image -> (N, g*s, g*s, D) spatial map."""
    tiles, num_tokens, width = tile_tokens.shape
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"tile token count {num_tokens} is not a square grid")
    images = tiles // (tile_grid * tile_grid)
    grid = tile_tokens.reshape(images, tile_grid, tile_grid, side, side, width)
    # (image, tile_row, tile_col, row, col) -> (image, tile_row, row, tile_col, col)
    return grid.permute(0, 1, 3, 2, 4, 5).reshape(images, tile_grid * side, tile_grid * side, width)


def pool_map(feature_map: torch.Tensor, side: int) -> torch.Tensor:
    """Adaptive max pool of a (N, H, W, D) map to (N, side, side, D)."""
    pooled = F.adaptive_max_pool2d(feature_map.permute(0, 3, 1, 2), (side, side))
    return pooled.permute(0, 2, 3, 1)


def initial_latents(tile_map: torch.Tensor, latent_count: int) -> torch.Tensor:
    """(N, Q, D): the tile map pooled to q x q, row-major."""
    side = latent_side(latent_count)
    return pool_map(tile_map, side).flatten(1, 2)


def latent_windows(tile_map: torch.Tensor, latent_count: int, window_size: int) -> torch.Tensor:
    """(N, Q, w*w, D): for latent r*q + c, the w x w window at rows w*r.., cols w*c.. of the (w*q)^2 pooled map."""
    side = latent_side(latent_count)
    pooled = pool_map(tile_map, side * window_size)
    images, _, _, width = pooled.shape
    windows = pooled.reshape(images, side, window_size, side, window_size, width)
    return windows.permute(0, 1, 3, 2, 4, 5).reshape(images, side * side, window_size * window_size, width)


class InteractionLayer(nn.Module):
    """One windowed cross-attention update of the latent tokens (about 9 * D^2 parameters, all bias-free)."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ConfigError(f"card.num_heads={num_heads} does not divide the LLM width {hidden_size}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        # W_in [h ; z] = W_h h + W_z z, as two modules: the question half runs once per block, not once per latent.
        self.question_in = nn.Linear(hidden_size, hidden_size, bias=False)
        self.latent_in = nn.Linear(hidden_size, hidden_size, bias=False)
        self.context_in = nn.Linear(hidden_size, hidden_size, bias=False)
        self.query_norm = nn.LayerNorm(hidden_size)
        self.context_norm = nn.LayerNorm(hidden_size)
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.kv_proj = nn.Linear(hidden_size, 2 * hidden_size, bias=False)  # keys and values in one matmul
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.output_norm = nn.LayerNorm(hidden_size)
        self.fc1 = nn.Linear(hidden_size, hidden_size, bias=False)
        self.fc2 = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, hidden: torch.Tensor, context: CardContext) -> torch.Tensor:
        """(B, L, D) hidden states -> the same with the latent positions of `context` updated."""
        if context.placeholder:
            return self._zero_weighted_pass(hidden, context)
        rows = context.latent_rows[:, None].expand_as(context.latent_positions)
        latents = hidden[rows, context.latent_positions]
        question = hidden[context.latent_rows, context.question_end_positions]
        # Window keys/values are computed once per image and shared by all of its turns.
        keys_values = self._window_keys_values(context.windows.to(hidden.dtype))[context.block_images]
        updated = self._update(latents, question, keys_values)
        return hidden.index_put((rows, context.latent_positions), updated)

    def _window_keys_values(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, Q, K, D) window features -> (N, Q, K, 2, heads, head_dim) keys and values: LN(W_ctx w) projected."""
        context = self.context_norm(self.context_in(windows))
        return self.kv_proj(context).unflatten(-1, (2, self.num_heads, self.head_dim))

    def _update(self, latents: torch.Tensor, question: torch.Tensor, keys_values: torch.Tensor) -> torch.Tensor:
        """latents (M, Q, D), question-end states (M, D), window keys/values (M, Q, K, 2, H, d) -> new latents."""
        blocks, count, width = latents.shape
        query_input = self.question_in(question)[:, None, :] + self.latent_in(latents)
        queries = self.q_proj(self.query_norm(query_input)).view(blocks, count, self.num_heads, self.head_dim)
        keys, values = keys_values.unbind(3)
        scores = torch.einsum("bqhd,bqkhd->bqhk", queries, keys) / math.sqrt(self.head_dim)
        weights = scores.softmax(dim=-1)
        attended = torch.einsum("bqhk,bqkhd->bqhd", weights, values).reshape(blocks, count, width)
        mixed = self.output_norm(self.o_proj(attended) + query_input)
        return latents + self.fc2(F.gelu(self.fc1(mixed)))

    def _zero_weighted_pass(self, hidden: torch.Tensor, context: CardContext) -> torch.Tensor:
        """Run every parameter on one dummy block and add exactly zero: the batch has no latent block, but DDP and
        FSDP need the same modules to run (and receive gradients) on every rank."""
        windows = context.windows[:1].to(hidden.dtype)
        latents = torch.zeros(1, windows.shape[1], hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
        question = hidden[:1, 0]
        updated = self._update(latents, question, self._window_keys_values(windows))
        return hidden + 0.0 * updated.sum()


@dataclass
class CardContext:
    """Everything one prefill forward needs to run the interaction layers; passed explicitly, never stored."""

    latent_positions: torch.Tensor  # (NB, Q) sequence positions of each latent block
    latent_rows: torch.Tensor  # (NB,) batch row of each block
    question_end_positions: torch.Tensor  # (NB,) position of the question-end token each block belongs to
    windows: torch.Tensor  # (NI, Q, K, D) raw window features per image
    block_images: torch.Tensor  # (NB,) index into `windows` for each block
    prefill: bool = True
    # No latent block in the batch: the layers run on dummy inputs with zero weight (see InteractionLayer).
    placeholder: bool = False


class _InteractionHook:
    """The forward hook of one decoder layer. It holds its CARD module and slot itself (nothing is stored on the
    decoder layer), so wrappers such as FSDP2's, which swap the layer's class, leave it intact; copy.deepcopy of
    the whole model re-points the copy's hooks at the copy's interaction layers."""

    def __init__(self, card: CardInteraction, slot: int) -> None:
        self.card = card
        self.slot = slot

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        context = self.card._context
        if context is None or not context.prefill:
            return None  # decode steps and plain LM calls run untouched
        # Decoder layers return a tensor in current transformers; older ones return a tuple.
        if isinstance(output, tuple):
            return (self.card.apply_layer(self.slot, output[0], context), *output[1:])
        return self.card.apply_layer(self.slot, output, context)


class CardInteraction(nn.Module):
    """The interaction layers and the forward hooks that apply them after the configured decoder layers."""

    def __init__(self, hidden_size: int, config: CardConfig, num_decoder_layers: int) -> None:
        super().__init__()
        self.after_layers = config.interaction_after_layers()
        if self.after_layers and self.after_layers[-1] >= num_decoder_layers:
            raise ConfigError(
                f"card.layer_start={config.layer_start}, layer_stride={config.layer_stride}, "
                f"num_layers={config.num_layers} place an interaction after decoder layer {self.after_layers[-1]}, "
                f"but the language model has only {num_decoder_layers} layers"
            )
        self.window_size = config.window_size
        self.layers = nn.ModuleList(InteractionLayer(hidden_size, config.num_heads) for _ in self.after_layers)
        self._context: CardContext | None = None
        self._handles: list[Any] = []
        self._attached: tuple[nn.Module, ...] = ()

    def attach(self, decoder_layers: nn.ModuleList) -> None:
        self.detach()
        for slot, layer_index in enumerate(self.after_layers):
            self._handles.append(decoder_layers[layer_index].register_forward_hook(_InteractionHook(self, slot)))
        # A tuple, not a ModuleList: the decoder layers belong to the language model, not to CARD.
        self._attached = tuple(decoder_layers[index] for index in self.after_layers)

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._attached = ()

    @property
    def attached_layers(self) -> tuple[nn.Module, ...]:
        """The decoder layers whose outputs the interaction layers rewrite."""
        return self._attached

    @contextlib.contextmanager
    def active(self, context: CardContext | None) -> Iterator[None]:
        """Make `context` visible to the hooks for the duration of one LLM forward; always cleared afterwards."""
        if self._context is not None:
            raise RuntimeError("a CARD context is already active (nested FUSION forward)")
        self._context = context
        try:
            yield
        finally:
            self._context = None

    def apply_layer(self, slot: int, hidden: torch.Tensor, context: CardContext) -> torch.Tensor:
        """Interaction layer `slot` on (B, L, D) hidden states; only latent positions change."""
        if context.latent_positions.numel() == 0 and not context.placeholder:
            return hidden
        _, latent_count, keys = context.windows.shape[:3]
        expected_count = latent_count if context.placeholder else context.latent_positions.shape[1]
        if keys != self.window_size**2 or latent_count != expected_count:
            raise ValueError(
                f"CARD windows of shape {tuple(context.windows.shape)} do not match card.window_size="
                f"{self.window_size} and Q={expected_count} latent slots per block"
            )
        return self.layers[slot](hidden, context)
