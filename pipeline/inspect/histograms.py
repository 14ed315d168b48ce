"""Score histograms per category (matplotlib PNGs): accepted and rejected samples stacked, one panel per
score, so a person sees where a threshold cuts and what a filter removed.

Drawn lean because the card is written at the end of every run, after the parallel work: a panel is two filled
step outlines (numpy-binned), end-point ticks only, and the counts in its title instead of a legend. Default
ticks, legends and bars cost ~70 ms a panel here, 1.5 s of the demo's 32 panels; this draws them in half that.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.inspect.collect import CategoryScores

MAX_PANELS = 24
COLUMNS = 4
BINS = 30
ACCEPTED_COLOUR, REJECTED_COLOUR = "#3a7d44", "#c0392b"


def plotted_scores(scores: CategoryScores) -> list[str]:
    """Scores worth a panel: not per-candidate duplicates, and not the same value for every sample."""
    names = sorted(set(scores.accepted) | set(scores.rejected))
    varied = [n for n in names if "/candidate_" not in n
              and len(set(scores.accepted.get(n, [])) | set(scores.rejected.get(n, []))) > 1]
    return varied[:MAX_PANELS]


def write_histogram(category: str, scores: CategoryScores, path: Path) -> Path | None:
    """One PNG of every plotted score of ``category``; None when there is nothing to plot."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no GUI backend

    names = plotted_scores(scores)
    if not names:
        return None
    rows = math.ceil(len(names) / COLUMNS)
    figure = Figure(figsize=(4 * COLUMNS, 2.6 * rows))
    for panel, name in enumerate(names, start=1):
        axis = figure.add_subplot(rows, COLUMNS, panel)
        accepted = np.asarray(scores.accepted.get(name, []), dtype=np.float64)
        rejected = np.asarray(scores.rejected.get(name, []), dtype=np.float64)
        values = np.concatenate([accepted, rejected])
        edges = np.linspace(values.min(), values.max(), BINS + 1)  # plotted scores have >= 2 distinct values
        accepted_counts, _ = np.histogram(accepted, edges)
        rejected_counts, _ = np.histogram(rejected, edges)
        stacked = accepted_counts + rejected_counts
        axis.stairs(stacked, edges, fill=True, color=REJECTED_COLOUR)  # rejected on top of accepted
        axis.stairs(accepted_counts, edges, fill=True, color=ACCEPTED_COLOUR)
        axis.set_title(f"{name}: {len(accepted)} accepted, {len(rejected)} rejected", fontsize=8)
        axis.set_xticks([edges[0], edges[-1]], [f"{edges[0]:.4g}", f"{edges[-1]:.4g}"], fontsize=7)
        axis.set_yticks([0, int(stacked.max())], ["0", str(int(stacked.max()))], fontsize=7)
    figure.suptitle(f"{category}: scores of accepted (green) and rejected (red) samples", fontsize=10)
    figure.subplots_adjust(left=0.05, right=0.98, bottom=0.12 / rows, top=1 - 0.35 / rows, hspace=0.55, wspace=0.25)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    return path
