"""Answer realignment: after the binding warm-up, bring the image's answers back into the decoder's output space.

The vision warm-up (`answer_through_llm`) trains the projector, the LLM's final norm and its output embeddings so
that the mean image token, read through the output path, gives the answer's first token: the decoder then finds
the answer in its own output space at every image token. The binding warm-up that follows trains the whole
decoder on multiple-choice text; in the option form its answers start with the option's text ("red: B"), so it
retrains the output embeddings of the very words the images answer with (colours, shapes, counts) on text alone.

Here the projector alone is trained, for `vision_warmup.realign_steps` steps, on the same target: the tower, the
decoder and so the option lookup the binding warm-up formed are left exactly as they are (text-only inputs never
pass through the projector). The first-token accuracy through the output path is measured before and after on
questions held out of the steps (the projector may have fitted the training questions only).
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from model.fusion import FusionModel
from pipeline.fileio import atomic_write_text
from train.config import VisionWarmupConfig
from train.optim import first_and_last_losses, fit_steps
from train.sources import Source
from train.vision_warmup import (
    VisionWarmupError,
    WarmupExample,
    answer_first_tokens,
    answers_of,
    logits_through_llm,
    tower_features,
    warmup_examples,
)

logger = logging.getLogger(__name__)

RESULT_FILE = "answer_realignment.json"
MAX_HELD_OUT = 512  # questions kept out of the steps to measure them (a fifth of them when there are fewer)
EVAL_BATCH = 64


def realign_answers(model: FusionModel, sources: list[Source], config: VisionWarmupConfig, seed: int,
                    out: Path | None = None, progress: bool = True,
                    examples_read: tuple[list[WarmupExample], Counter] | None = None) -> dict:
    """Train `model.mm_projector` alone for `config.realign_steps` steps on the answers' first tokens through the
    LLM's output path; returns (and saves) the held-out first-token accuracy before and after. `examples_read`:
    `warmup_examples(model, sources, config.max_images)` when the caller has read them already (the vision
    warm-up's)."""
    if not model.config.use_tune:
        raise VisionWarmupError("vision_warmup.realign_steps: the tower reads no question without TUNE (use_tune)")
    examples, _ = examples_read or warmup_examples(model, sources, config.max_images)
    answers = answers_of(examples)
    questions = [(e, t) for e in examples for t, answer in enumerate(e.turn_answers) if answer in answers]
    if not questions:
        raise VisionWarmupError("vision_warmup.realign_steps: no question with a scene graph's answer in the "
                                "training sources; set vision_warmup.realign_steps: 0")
    rng = random.Random(seed)
    rng.shuffle(questions)
    held_out_count = min(MAX_HELD_OUT, len(questions) // 5)
    held_out, train = questions[:held_out_count], questions[held_out_count:]
    first_tokens = answer_first_tokens(model, answers).tolist()
    target_of = {answer: token for answer, token in zip(answers, first_tokens, strict=True)}
    before = output_path_accuracy(model, held_out, target_of)
    first, last = first_and_last_losses(_fit(model, train, target_of, config, rng, progress))
    after = output_path_accuracy(model, held_out, target_of)
    result = {"steps": config.realign_steps, "questions": len(train), "held_out": held_out_count,
              "first_loss": first["loss"], "last_loss": last["loss"],
              "held_out_first_token_accuracy": {"before": before, "after": after}}
    logger.info("answer realignment: %d projector steps, the answer's first token through the output path on %d "
                "held-out questions %.1f%% -> %.1f%%", config.realign_steps, held_out_count, 100 * before,
                100 * after)
    if out is not None:
        atomic_write_text(out / RESULT_FILE, json.dumps(result, indent=2))
    return result


def _fit(model: FusionModel, questions: list[tuple[WarmupExample, int]], target_of: dict[str, int],
         config: VisionWarmupConfig, rng: random.Random, progress: bool) -> list[dict[str, float]]:
    parameters = [p for p in model.mm_projector.parameters() if p.requires_grad]
    if not parameters:
        raise VisionWarmupError("vision_warmup.realign_steps > 0 but the projector is frozen (model.trainable)")

    def step_losses() -> dict[str, torch.Tensor]:
        batch = [questions[rng.randrange(len(questions))] for _ in range(config.batch_size)]
        return {"loss": nn.functional.cross_entropy(*_logits_and_targets(model, batch, target_of))}

    return fit_steps(parameters, step_losses, steps=config.realign_steps, lr=config.lr,
                     warmup_ratio=config.warmup_ratio, schedule="cosine", desc="answer realignment",
                     progress=progress)


def _logits_and_targets(model: FusionModel, batch: list[tuple[WarmupExample, int]], target_of: dict[str, int]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():  # the tower stays as it is: only the projector learns
        features = tower_features(model, [e for e, _ in batch], [e.turn_texts[t] for e, t in batch])
    logits = logits_through_llm(model, features)
    targets = torch.tensor([target_of[e.turn_answers[t]] for e, t in batch], device=logits.device)
    return logits, targets


@torch.no_grad()
def output_path_accuracy(model: FusionModel, questions: list[tuple[WarmupExample, int]],
                         target_of: dict[str, int]) -> float:
    """How often the mean image token, read through the output path, gives the answer's first token."""
    if not questions:
        return 0.0
    hits = 0
    for start in range(0, len(questions), EVAL_BATCH):
        logits, targets = _logits_and_targets(model, questions[start:start + EVAL_BATCH], target_of)
        hits += int((logits.argmax(-1) == targets).sum())
    return hits / len(questions)
