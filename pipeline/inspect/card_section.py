"""The dataset card's "Scores and filters" section: the pass rate of every stage per category and the score
histograms (PNGs under ``samples/scores/``, which the card shows and ``fusion publish`` uploads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.inspect.collect import category_scores, pass_rates
from pipeline.inspect.histograms import write_histogram

HISTOGRAM_DIR = "samples/scores"


def scores_markdown(root: Path, manifest: dict[str, Any]) -> str:
    order, rates = pass_rates(root, manifest)
    if not rates:
        return "No sample has been written yet."
    categories = sorted(rates)
    stages = [s for s in order if any(row["stage"] == s for c in categories for row in rates[c])]
    table = ["| stage | " + " | ".join(categories) + " |", "|---|" + "---|" * len(categories)]
    for stage in stages:
        cells = []
        for category in categories:
            row = next((r for r in rates[category] if r["stage"] == stage), None)
            cells.append("-" if row is None or row["pass_rate"] is None
                         else f"{row['pass_rate']:.1%} ({row['rejected']:,}/{row['input']:,})")
        table.append(f"| `{stage}` | " + " | ".join(cells) + " |")
    lines = ["Pass rate of each stage per category: the share of the samples that reached the stage which it "
             "kept (rejected / reached). `select` removes accepted samples beyond the target; run-wide stages "
             "(dedup, top fraction) decide after the units, over the whole run.", "", *table]
    for category, scores in sorted(category_scores(root, manifest).items()):
        name = f"{HISTOGRAM_DIR}/{category}.png"
        if write_histogram(category, scores, root / name):
            # An HTML image (the Hub renders it): the card's markdown images are its sample rows.
            lines += ["", f"### Scores of {category}", "", f'<img src="{name}" alt="scores of {category}" width="900">']
    lines += ["", "Every score is a `score/<name>` column of the shard parquets (CLIP scores are raw cosine "
              "similarities, not CLIPScore's 2.5x or 100x scale), so other thresholds can be applied without "
              "re-synthesis: `fusion reshard DIR --where 'EXPR' --out DIR2`."]
    return "\n".join(lines)
