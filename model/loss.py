"""Next-token cross entropy over the supervised tokens only, computed in chunks so that full-vocabulary logits are
never materialised for the whole batch at once.

Only positions whose next token is supervised reach the LM head; they are processed `chunk_tokens` at a time under
activation checkpointing, so the backward pass recomputes one chunk's logits instead of keeping them all (the
(B, L, V) logits of a 4k-token batch with a 128k vocabulary would otherwise be tens of GiB).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


class AllLabelsMaskedError(ValueError):
    """A batch with no supervised token: training on it would silently give a loss of 0."""


def supervised_token_count(labels: torch.Tensor) -> torch.Tensor:
    """Tokens whose label is supervised after the next-token shift."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def check_supervised(labels: torch.Tensor) -> None:
    if not bool((labels[:, 1:] != IGNORE_INDEX).any()):
        raise AllLabelsMaskedError(
            f"every label of this batch of {labels.shape[0]} samples is masked: the loss would be 0 and nothing "
            "would be learned (a chat template / tokenizer mismatch, or answers truncated away)"
        )


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token losses, supervised token count) from full (B, L, V) logits."""
    check_supervised(labels)
    shifted_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shifted_labels = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (shifted_labels != IGNORE_INDEX).sum()


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
    return F.cross_entropy(lm_head(hidden).float(), targets, reduction="sum")


def chunked_cross_entropy_sum(
    hidden: torch.Tensor, labels: torch.Tensor, lm_head: nn.Module, chunk_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token losses, supervised token count) from final hidden states (B, L, D) and the LM head."""
    check_supervised(labels)
    shifted_labels = labels[:, 1:]
    supervised = shifted_labels != IGNORE_INDEX
    states = hidden[:, :-1][supervised]  # (N, D): only positions that predict a supervised token
    targets = shifted_labels[supervised]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk_tokens):
        piece = slice(start, start + chunk_tokens)
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss, states[piece], targets[piece], lm_head, use_reentrant=False)
        else:
            total = total + _chunk_loss(states[piece], targets[piece], lm_head)
    return total, targets.new_tensor(targets.numel())
