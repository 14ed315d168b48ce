"""Option-binding warm-up: teach a decoder built from scratch to answer a multiple-choice question by its letter.

Picking an option by its letter is a lookup in the context: find the option whose text is the answer, write the
letter written before it (an induction-style circuit). The demo's 4-layer decoder does not form it from the image
questions in the training budget, though it knows the answer among the options: scored as cloze (each option's text
as the answer) the demo model picks the right one 53% of the time, by letter 34%, below the majority letter.
`benchmarks/option_lookup_lr.py` measures it on a decoder of the demo's size (hidden 128, 4 layers) with a
word-level vocabulary: told the answer ("v5 ? A . v1 B . v5 ..."), it picks the letter at 73% after 800 steps of
64 at LR 3e-4, 58% at 2e-3, 36% when the told answer is another token than the option's (25% chance); with the
lookup formed, it learns within 300 steps to pick the letter of an answer it must work out itself (a second hop),
74%, while a fresh decoder stays at chance, and so does one that goes on at 2e-3 (the lookup undone).

So before the FUSION training, the decoder alone trains on text-only multiple-choice turns made from the training
data's own: each question with its options shuffled and lettered again, and the answer stated before it ("The
answer is red."); the target is the letter. With `data.multiple_choice_answer: option_and_letter` the answer is
the option's text then its letter ("red: B", train/choices.py) and nothing is told before: the lookup then starts
from the text the model has just written, as it does when it answers an image question (told before the question,
the lookup it formed read the told line, which an image question does not have). Untold, though, the option's text
cannot be known from text alone, and the decoder learns to copy any listed option, a habit that outweighs the
image in training: `binding_warmup.told_share` tells the answer first in a share of the conversations (half in the
`demo` config), so the text is learned as evidence-driven where evidence exists. Nothing here reads the image:
what the answer is still has to come from the image in training. It runs once, before step 0 (a resumed run has it
in its checkpoint), after the vision warm-up, on the multiple-choice turns of the training sources (a human turn
with `A. ...` option lines answered by one of their letters); with none, it is a config error naming the sources.
"""

from __future__ import annotations

import json
import logging
import random
import string
from collections import Counter
from pathlib import Path

import torch

from model.fusion import FusionModel
from pipeline.fileio import atomic_write_text
from train.choices import LETTER, AnswerForm, ChoiceQuestion, answer_in_form, choice_question
from train.config import BindingWarmupConfig
from train.loader import shard_samples
from train.optim import first_and_last_losses, fit_steps
from train.sources import Source

logger = logging.getLogger(__name__)

RESULT_FILE = "binding_warmup.json"
MAX_HELD_OUT = 256  # questions kept out of the warm-up to measure it (a fifth of them when there are fewer)
MIN_QUESTIONS = 10


class BindingWarmupError(ValueError):
    pass


def told_conversation(question: ChoiceQuestion, rng: random.Random, form: AnswerForm = LETTER,
                      told_share: float = 0.0) -> list[dict[str, str]]:
    """The question with its options shuffled and lettered again, and its answer in `form`: the option's letter,
    told first ("The answer is red." before the question), or the option's text then its letter, which tells it
    where the letter is looked up when the model answers an image question; in that form the answer is told
    before the question in a `told_share` of the conversations (drawn from `rng`), in the others nothing is."""
    order = list(range(len(question.options)))
    rng.shuffle(order)
    lines = [f"{string.ascii_uppercase[new]}. {question.options[old]}" for new, old in enumerate(order)]
    # no draw at share 0: an untold warm-up keeps the random stream (and so the batches) it always had
    tells = form == LETTER or (told_share > 0 and rng.random() < told_share)
    told = [f"The answer is {question.options[question.answer]}."] if tells else []
    text = "\n".join([*told, *question.before, *lines, *question.after])
    return [{"from": "human", "value": text},
            {"from": "gpt", "value": answer_in_form(question.options[question.answer],
                                                    string.ascii_uppercase[order.index(question.answer)], form)}]


def choice_questions(sources: list[Source], max_questions: int) -> tuple[list[ChoiceQuestion], Counter]:
    """Up to `max_questions` distinct multiple-choice turns of the sources, in shard order; counts of what was
    skipped."""
    counts: Counter = Counter()
    found: dict[ChoiceQuestion, None] = {}  # ordered and distinct: many scenes ask the same question
    for source in sources:
        for shard in source.shards:
            for _, raw in shard_samples(shard, counts):
                try:
                    turns = json.loads(raw["json"]).get("conversations", [])
                except (KeyError, ValueError):
                    counts["unreadable json"] += 1
                    continue
                for human, gpt in zip(turns[::2], turns[1::2]):
                    question = choice_question(str(human.get("value", "")), str(gpt.get("value", "")))
                    if question is not None:
                        found[question] = None
                        if len(found) >= max_questions:
                            return list(found), counts
    return list(found), counts


def warm_up_binding(model: FusionModel, sources: list[Source], config: BindingWarmupConfig, seed: int,
                    out: Path | None = None, progress: bool = True, form: AnswerForm = LETTER) -> dict:
    """Train the language model on multiple choice whose answer it is given (told, or its text in the answer `form`)
    for `config.steps` steps; returns (and saves) its losses and the held-out letter accuracy before and after."""
    parameters = [p for p in model.language_model.parameters() if p.requires_grad]
    if not parameters:
        raise BindingWarmupError("binding_warmup.steps > 0 but the language model is frozen (model.trainable)")
    questions, counts = choice_questions(sources, config.max_questions)
    if len(questions) < MIN_QUESTIONS:
        raise BindingWarmupError(
            f"binding_warmup: the training sources ({', '.join(s.name for s in sources)}) have {len(questions)} "
            f"distinct multiple-choice turns (a human turn with 'A. ...' option lines answered by one of their "
            f"letters), at least {MIN_QUESTIONS} are needed; set binding_warmup.steps: 0 for other data")
    rng = random.Random(seed)
    rng.shuffle(questions)
    held_out_count = min(MAX_HELD_OUT, len(questions) // 5)
    held_out = [told_conversation(q, rng, form, config.told_share) for q in questions[:held_out_count]]
    train = questions[held_out_count:]
    before = told_accuracy(model, held_out)
    history = _fit(model, train, config, parameters, rng, progress, form)
    after = told_accuracy(model, held_out)
    first, last = first_and_last_losses(history)
    chance = sum(1 / len(q.options) for q in questions[:held_out_count]) / held_out_count
    result = {"steps": config.steps, "form": form, "told_share": config.told_share if form != LETTER else 1.0,
              "questions": len(train), "held_out": held_out_count,
              "skipped": dict(counts),
              "first_loss": first["loss"], "last_loss": last["loss"],
              "held_out_accuracy": {"before": before, "after": after, "chance": chance}}
    logger.info("binding warm-up: %d steps on %d questions, loss %.3f -> %.3f, the given answer's letter on %d "
                "held-out questions %.1f%% -> %.1f%% (chance %.1f%%)", config.steps, len(train),
                result["first_loss"], result["last_loss"], held_out_count, 100 * before, 100 * after, 100 * chance)
    if out is not None:
        atomic_write_text(out / RESULT_FILE, json.dumps(result, indent=2))
    return result


def _fit(model: FusionModel, questions: list[ChoiceQuestion], config: BindingWarmupConfig,
         parameters: list[torch.nn.Parameter], rng: random.Random, progress: bool, form: AnswerForm
         ) -> list[dict[str, float]]:
    builder = model.sequence_builder
    device = model.mm_projector[0].weight.device

    def step_losses() -> dict[str, torch.Tensor]:
        conversations = [told_conversation(questions[rng.randrange(len(questions))], rng, form, config.told_share)
                         for _ in range(config.batch_size)]
        batch = builder.collate([(None, c) for c in conversations], latent_count=0).to(device)
        return {"loss": model(batch, dsm=False).lm_loss}  # the decoder's loss alone: no DSM pass through the ViT

    was_training = model.training
    model.train()
    try:
        # constant after the ramp: the circuit forms late and suddenly; a cosine would have lowered the LR by then
        return fit_steps(parameters, step_losses, steps=config.steps, lr=config.lr, warmup_ratio=config.warmup_ratio,
                         schedule="constant", desc="binding warm-up", progress=progress)
    finally:
        model.train(was_training)


@torch.no_grad()
def told_accuracy(model: FusionModel, conversations: list[list[dict[str, str]]]) -> float:
    """How often greedy decoding writes the given option's letter (the answer's last token)."""
    was_training = model.training
    model.eval()
    try:
        scores = model.answer_log_likelihoods([None] * len(conversations), conversations, batch_size=64)
    finally:
        model.train(was_training)
    return sum(score.last_greedy for score in scores) / len(scores)
