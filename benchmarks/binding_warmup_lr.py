"""The binding warm-up's learning rate, side by side in one run on the demo data (train/binding_warmup.py).

For each LR a fresh demo model (`fusion-cpu-small`, the demo's fitted tokenizer, the same seed) runs the binding
warm-up of the `demo` config, and is then given each multiple-choice question of the held-out split with its options
shuffled and lettered again and its right option's text already written ("red: "): how often greedy decoding writes
that option's letter, by the kind of option (colour, count, shape, background pattern, yes/no, other), beside the
warm-up's own held-out figure. The lookup forms late and suddenly, and for the rarer kinds of option later than
for the common ones (in the demo data counts answer 35% of the questions, colours of a shape 10%), so its LR decides
what the warm-up's fixed budget buys.

Run: python benchmarks/binding_warmup_lr.py [--data DATASET] [--lrs 3e-4,6e-4,1e-3] [--steps 1600]
     (about 4 minutes per LR on an idle 2-core machine, plus a minute to synthesize the demo without --data)
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.train_throughput import demo_dataset  # noqa: E402
from generators.procedural.vocabulary import OBJECT_COLORS, PATTERN_ANSWERS, SHAPES  # noqa: E402
from train.binding_warmup import choice_questions, told_conversation, warm_up_binding  # noqa: E402
from train.choices import ChoiceQuestion  # noqa: E402
from train.config import SourceSpec, load_train_config  # noqa: E402
from train.distributed import DistInfo  # noqa: E402
from train.modeling import build_model  # noqa: E402
from train.sources import resolve_sources  # noqa: E402

KINDS = ("colour", "count", "shape", "pattern", "yes/no", "other")


def option_kind(question: ChoiceQuestion) -> str:
    answer = question.options[question.answer]
    if answer in OBJECT_COLORS:
        return "colour"
    if answer.isdigit():
        return "count"
    if answer in SHAPES:
        return "shape"
    if answer in PATTERN_ANSWERS:
        return "pattern"
    return "yes/no" if answer in ("Yes", "No") else "other"


def letter_given_text(model, questions: list[ChoiceQuestion], form: str) -> dict[str, float]:
    """kind -> the share of its questions whose letter greedy decoding writes after the right option's text."""
    rng = random.Random(1)  # the same letterings for every LR
    conversations = [told_conversation(question, rng, form) for question in questions]
    model.eval()
    with torch.no_grad():
        scores = model.answer_log_likelihoods([None] * len(conversations), conversations, batch_size=64)
    hits: dict[str, list[bool]] = defaultdict(list)
    for question, score in zip(questions, scores):
        hits[option_kind(question)].append(score.last_greedy)
    return {kind: sum(v) / len(v) for kind, v in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="a dataset folder (default: synthesize the demo)")
    parser.add_argument("--lrs", default="3e-4,6e-4,1e-3")
    parser.add_argument("--steps", type=int, default=None, help="warm-up steps (default: the demo config's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="binding-lr-") as temp:
        work = Path(temp)
        data = args.data or demo_dataset(work)
        train_sources = resolve_sources([SourceSpec(path=str(data))], 0)
        held_out, _ = choice_questions(resolve_sources([SourceSpec(path=str(data), split="test")], 0), 100_000)
        rows = []
        for lr in args.lrs.split(","):
            overrides = [f"binding_warmup.lr={lr}"] + ([f"binding_warmup.steps={args.steps}"] if args.steps else [])
            config = load_train_config("demo", overrides)
            # a fresh model per LR; its tokenizer is fitted once and reused from `work` (the same data, the same seed)
            model = build_model(config.model, seed=config.seed, sources=train_sources, out=work / "model",
                                info=DistInfo(0, 1, 0, torch.device("cpu")))
            started = time.perf_counter()
            result = warm_up_binding(model, train_sources, config.binding_warmup, config.seed, None, progress=False,
                                     form=config.data.multiple_choice_answer)
            seconds = time.perf_counter() - started
            rows.append((lr, seconds, result["held_out_accuracy"]["after"],
                         letter_given_text(model, held_out, config.data.multiple_choice_answer)))
    counts = Counter(option_kind(question) for question in held_out)
    print(f"binding warm-up of the demo config ({config.binding_warmup.steps} steps of "
          f"{config.binding_warmup.batch_size}); the letter written after the right option's text on the "
          f"{len(held_out)} multiple-choice questions of the held-out split, by kind of option (questions):")
    print(f"{'LR':>8} {'seconds':>8} {'warm-up':>8} " + " ".join(f"{f'{k} ({counts[k]})':>13}" for k in KINDS))
    for lr, seconds, own, by_kind in rows:
        cells = " ".join(f"{100 * by_kind[k]:12.1f}%" if k in by_kind else f"{'-':>13}" for k in KINDS)
        print(f"{lr:>8} {seconds:8.0f} {100 * own:7.1f}% {cells}")


if __name__ == "__main__":
    main()
