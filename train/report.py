"""The run report of `fusion run`: `report.md` with the loss curve (PNG), the held-out accuracy tables beside
their baselines, the learning checks, and where every output is."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.fileio import atomic_path, atomic_write_text
from train.metrics import read_metrics

REPORT_FILE = "report.md"
LOSS_CURVE = "loss_curve.png"


def plot_loss_curve(metrics_path: Path, image: Path) -> bool:
    """Training loss (and its LM part) per logged step; False when there is nothing to plot."""
    records = read_metrics(metrics_path)
    if not records:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    axis.plot(steps, [r["loss"] for r in records], label="loss (LM + DSM)", linewidth=1.2)
    axis.plot(steps, [r["lm_loss"] for r in records], label="LM loss", linewidth=1.0, alpha=0.8)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title("training loss")
    figure.tight_layout()
    with atomic_path(image) as temp:
        figure.savefig(temp, format="png")
    plt.close(figure)
    return True


def _percent(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1%}"


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    header = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = []
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row[key]
            cells.append(_percent(value) if key in ("model", "chance", "majority", "letter", "text", "agrees") else
                         f"{value:+.1%}" if key == "margin" else str(value))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *body])


def write_report(out: Path, *, results: dict[str, Any], paths: dict[str, Path], summary: dict[str, Any]) -> Path:
    curve = out / LOSS_CURVE
    has_curve = plot_loss_curve(paths["metrics"], curve)
    lines = ["# FUSION run report", ""]
    lines += [f"- {name}: {value}" for name, value in summary.items()]
    lines += ["", "## Training loss", ""]
    lines.append(f"![training loss]({LOSS_CURVE})" if has_curve else "No training step was logged.")
    lines += ["", "## Held-out accuracy per category", "",
              "Scored on the held-out split by batched greedy generation; chance and majority-answer baselines of "
              "the same split (see train/evaluate.py for their definitions). Caption families are scored with "
              "ROUGE-L F1.", ""]
    lines.append(_table(results["categories"], [("category", "category"), ("metric", "metric"), ("n", "questions"),
                                                ("model", "model"), ("chance", "chance"),
                                                ("majority", "majority"), ("margin", "vs better baseline")]))
    lines += ["", "## Learning checks", ""]
    for check in results["checks"]:
        verdict = "passed" if check["passed"] else "**failed**"
        lines.append(f"- {check['check']}: model {_percent(check['model'])}, chance {_percent(check['chance'])}, "
                     f"majority {_percent(check['majority'])}: {check['margin']:+.1%} "
                     f"(needs {results['check_margin']:+.0%}) - {verdict}")
    if results.get("multiple_choice_cloze"):
        lines += ["", "## Multiple choice as cloze", "",
                  "Each option's text scored as the answer to the question without its options, by log-likelihood per "
                  "character (the cloze formulation of OLMES); beside the option-letter score of the same questions. "
                  "Not part of the learning checks: it shows whether the model knows the answer apart from binding it "
                  "to its letter."]
        rows = results["multiple_choice_cloze"]
        columns = [("question_type", "question type"), ("n", "questions"), ("letter", "by letter")]
        if rows[0].get("agrees") is not None:
            lines[-1] += (" Answered in the option form (\"red: B\"), a miss by letter comes from the text or from the "
                          "letter after it: how often the option text written is the right one, and how often the "
                          "letter written is that text's own.")
            columns += [("text", "option text right"), ("agrees", "letter of the text written")]
        lines.append("")
        lines.append(_table(rows, [*columns, ("model", "cloze"), ("chance", "chance"), ("majority", "majority"),
                                   ("margin", "cloze vs better baseline")]))
    lines += ["", "## Per question type", ""]
    lines.append(_table(results["question_types"], [("category", "category"), ("question_type", "question type"),
                                                    ("metric", "metric"), ("n", "questions"), ("model", "model"),
                                                    ("chance", "chance"), ("majority", "majority"),
                                                    ("margin", "vs better baseline")]))
    lines += ["", "## Where everything is", ""]
    lines += [f"- {name}: `{path}`" for name, path in paths.items()]
    lines.append("")
    report = out / REPORT_FILE
    atomic_write_text(report, "\n".join(lines))
    return report
