"""Score histograms per category (matplotlib PNGs): accepted and rejected samples overlaid, one panel per
score, so a person sees where a threshold cuts and what a filter removed."""

from __future__ import annotations

import math
from pathlib import Path

from pipeline.inspect.collect import CategoryScores

MAX_PANELS = 24
COLUMNS = 4


def plotted_scores(scores: CategoryScores) -> list[str]:
    """Scores worth a panel: not per-candidate duplicates, and not the same value for every sample."""
    names = sorted(set(scores.accepted) | set(scores.rejected))
    varied = [n for n in names if "/candidate_" not in n
              and len(set(scores.accepted.get(n, [])) | set(scores.rejected.get(n, []))) > 1]
    return varied[:MAX_PANELS]


def write_histogram(category: str, scores: CategoryScores, path: Path) -> Path | None:
    """One PNG of every plotted score of ``category``; None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = plotted_scores(scores)
    if not names:
        return None
    rows = math.ceil(len(names) / COLUMNS)
    figure, axes = plt.subplots(rows, COLUMNS, figsize=(4 * COLUMNS, 2.6 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names):
        accepted, rejected = scores.accepted.get(name, []), scores.rejected.get(name, [])
        values = accepted + rejected
        low, high = min(values), max(values)
        bins = 30 if high > low else 1
        # stepfilled: one polygon per series instead of a patch per bar, so a card's histograms draw in
        # well under a second (bars made the card of a small run take longer than its synthesis)
        axis.hist([accepted, rejected], bins=bins, range=(low, high) if high > low else None, stacked=True,
                  histtype="stepfilled", color=["#3a7d44", "#c0392b"],
                  label=[f"accepted ({len(accepted)})", f"rejected ({len(rejected)})"])
        axis.set_title(name, fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=6)
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    figure.suptitle(f"{category}: scores of accepted and rejected samples", fontsize=10)
    figure.subplots_adjust(left=0.05, right=0.98, bottom=0.12 / rows, top=1 - 0.35 / rows, hspace=0.55, wspace=0.25)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
