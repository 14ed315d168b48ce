"""The second half of `fusion run`: train on the synthesized shards, evaluate on the held-out ones, write the report.

    OUT/dataset/   the synthesized dataset (shards, manifest, card)
    OUT/train/     train_config.yaml, tokenizer/, the warm-ups' results, checkpoints/, metrics.jsonl, tensorboard/
    OUT/eval/      predictions.jsonl, results.json
    OUT/report.md  loss curve, accuracy tables beside the baselines, learning checks, where everything is

Rerunning resumes: complete shards are skipped, training continues from its latest checkpoint (a finished training
is not redone), and evaluation and the report are written again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from train.answer_realignment import RESULT_FILE as REALIGNMENT_FILE
from train.binding_warmup import RESULT_FILE as BINDING_FILE
from train.choices import OPTION_AND_LETTER
from train.config import TrainConfig, train_config_from_section
from train.evaluate import evaluate, format_table
from train.report import LOSS_CURVE, write_report
from train.trainer import CONFIG_FILE, train
from train.vision_warmup import RESULT_FILE as WARMUP_FILE

logger = logging.getLogger(__name__)

DATASET_DIR = "dataset"
TRAIN_DIR = "train"
EVAL_DIR = "eval"
DEFAULT_TRAIN_SECTION = {"base": "demo"}


@dataclass
class RunOutcome:
    report: Path
    results: dict[str, Any]
    checks_passed: bool


def run_train_config(section: dict[str, Any] | None, source: str, overrides: list[str] | None = None
                     ) -> TrainConfig:
    return train_config_from_section(section or DEFAULT_TRAIN_SECTION, source, overrides)


def train_and_evaluate(config: TrainConfig, dataset: Path, out: Path, *, synthesis_seconds: float | None = None,
                       progress: bool = True) -> RunOutcome:
    started = time.perf_counter()
    result = train(config, out / TRAIN_DIR, data=str(dataset), resume="latest")
    train_seconds = time.perf_counter() - started
    eval_started = time.perf_counter()
    results = evaluate(result.checkpoint, str(dataset), out / EVAL_DIR, config.eval, seed=config.seed,
                       progress=progress, answer_form=config.data.multiple_choice_answer)
    eval_seconds = time.perf_counter() - eval_started
    print(format_table(results))
    summary = {
        "training config": f"`{config.name}` (saved as `{out / TRAIN_DIR / CONFIG_FILE}`)",
        "model": f"`{config.model.preset}` trained from scratch" if config.model.init_from is None
        else f"`{config.model.preset}` from `{config.model.init_from}`",
        "vision warm-up": _warmup_summary(out / TRAIN_DIR / WARMUP_FILE),
        "binding warm-up": _binding_summary(out / TRAIN_DIR / BINDING_FILE),
        "answer realignment": _realignment_summary(out / TRAIN_DIR / REALIGNMENT_FILE),
        "optimizer steps": f"{result.steps} of {result.total_steps} (global batch {config.batch.global_batch})",
        "held-out questions": results["items"],
        "training time": f"{train_seconds:.0f} s (this invocation)",
        "evaluation time": f"{eval_seconds:.0f} s",
    }
    if synthesis_seconds is not None:
        summary = {"synthesis time": f"{synthesis_seconds:.0f} s (this invocation)", **summary}
    paths = {
        "dataset": dataset, "dataset card": dataset / "README.md", "final checkpoint": result.checkpoint,
        "metrics": result.metrics, "tensorboard": out / TRAIN_DIR / "tensorboard",
        "predictions": out / EVAL_DIR / "predictions.jsonl", "results": out / EVAL_DIR / "results.json",
        "loss curve": out / LOSS_CURVE,
    }
    if (out / TRAIN_DIR / WARMUP_FILE).is_file():
        paths["vision warm-up losses"] = out / TRAIN_DIR / WARMUP_FILE
    if (out / TRAIN_DIR / BINDING_FILE).is_file():
        paths["binding warm-up"] = out / TRAIN_DIR / BINDING_FILE
    if (out / TRAIN_DIR / REALIGNMENT_FILE).is_file():
        paths["answer realignment"] = out / TRAIN_DIR / REALIGNMENT_FILE
    report = write_report(out, results=results, paths=paths, summary=summary)
    passed = all(check["passed"] for check in results["checks"])
    print(f"report:  {report}")
    return RunOutcome(report, results, passed)


def _binding_summary(path: Path) -> str:
    if not path.is_file():
        return "none"
    warmup = json.loads(path.read_text())
    accuracy = warmup["held_out_accuracy"]
    given = "told"
    if warmup.get("form") == OPTION_AND_LETTER:
        given = "the option's text before its letter"
        if warmup.get("told_share"):
            given += f", told first in {100 * warmup['told_share']:.0f}% of them"
    return (f"{warmup['steps']} steps on {warmup['questions']} multiple-choice questions, the answer {given} "
            f"(train/binding_warmup.py; loss {warmup['first_loss']:.2f} -> {warmup['last_loss']:.2f}, the given "
            f"option's letter on {warmup['held_out']} held-out questions {100 * accuracy['before']:.1f}% -> "
            f"{100 * accuracy['after']:.1f}%, chance {100 * accuracy['chance']:.1f}%)")


def _realignment_summary(path: Path) -> str:
    if not path.is_file():
        return "none"
    realignment = json.loads(path.read_text())
    accuracy = realignment["held_out_first_token_accuracy"]
    return (f"{realignment['steps']} projector steps (train/answer_realignment.py; the answer's first token read "
            f"from the image through the LLM's output path on {realignment['held_out']} held-out questions "
            f"{100 * accuracy['before']:.1f}% -> {100 * accuracy['after']:.1f}%)")


def _warmup_summary(path: Path) -> str:
    if not path.is_file():
        return "none (the vision tower started from the preset's weights)"
    warmup = json.loads(path.read_text())
    first, last = warmup["first_losses"], warmup["last_losses"]
    losses = ", ".join(f"{name} {first[name]:.2f} -> {last[name]:.2f}" for name in first)
    return (f"{warmup['steps']} steps on {warmup['examples']} images with scene graphs "
            f"(train/vision_warmup.py; losses {losses})")
