"""The score histograms show the data: bars where the samples are, accepted in green under rejected in red, one
panel per varied score."""

import numpy as np
from PIL import Image

from pipeline.inspect.collect import CategoryScores
from pipeline.inspect.histograms import (
    ACCEPTED_COLOUR,
    BINS,
    COLUMNS,
    HEADER_HEIGHT,
    PANEL_HEIGHT,
    PANEL_WIDTH,
    PLOT_BOTTOM,
    PLOT_LEFT,
    PLOT_RIGHT,
    PLOT_TOP,
    REJECTED_COLOUR,
    binned,
    write_histogram,
)


def _mask(pixels: np.ndarray, colour: str) -> np.ndarray:
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return (pixels == rgb).all(axis=-1)


def test_accepted_and_rejected_bars_sit_where_their_values_are(tmp_path):
    rng = np.random.default_rng(0)
    # low values kept, high values removed (a threshold at 0.5); a second score only so there are two panels
    scores = CategoryScores(accepted={"clip/score": list(rng.uniform(0.0, 0.45, 300)), "rules/words": [3.0, 4.0]},
                            rejected={"clip/score": list(rng.uniform(0.55, 1.0, 100)), "rules/words": [9.0],
                                      "rules/constant": [1.0, 1.0]})
    path = write_histogram("SynthColor", scores, tmp_path / "hist.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (PANEL_WIDTH * COLUMNS, HEADER_HEIGHT + PANEL_HEIGHT)  # 2 panels: one row
        pixels = np.asarray(image.convert("RGB"))
    first = pixels[HEADER_HEIGHT:HEADER_HEIGHT + PANEL_HEIGHT, PLOT_LEFT:PANEL_WIDTH - PLOT_RIGHT]
    green_columns = np.flatnonzero(_mask(first, ACCEPTED_COLOUR).any(axis=0))
    red_columns = np.flatnonzero(_mask(first, REJECTED_COLOUR).any(axis=0))
    assert green_columns.size and red_columns.size
    assert green_columns.max() < red_columns.min()  # every kept sample left of every removed one
    third = pixels[HEADER_HEIGHT:, 2 * PANEL_WIDTH:3 * PANEL_WIDTH]
    assert not (_mask(third, ACCEPTED_COLOUR) | _mask(third, REJECTED_COLOUR)).any()  # constant score: no panel


def test_bar_heights_follow_the_counts(tmp_path):
    # 30 bins over [0, 30): bin i holds i accepted samples, so green bars grow from left to right
    values = [i + 0.5 for i in range(BINS) for _ in range(i)] + [0.0, float(BINS)]
    scores = CategoryScores(accepted={"score": values})
    edges, accepted, rejected = binned(scores, "score")
    assert accepted.sum() == len(values) and rejected.sum() == 0 and edges[0] == 0.0 and edges[-1] == BINS
    with Image.open(write_histogram("C", scores, tmp_path / "h.png")) as image:
        pixels = np.asarray(image.convert("RGB"))[HEADER_HEIGHT:HEADER_HEIGHT + PANEL_HEIGHT]
    green = _mask(pixels[:, PLOT_LEFT:PANEL_WIDTH - PLOT_RIGHT], ACCEPTED_COLOUR)
    width = green.shape[1] / BINS
    heights = [green[:, int((i + 0.5) * width)].sum() for i in range(BINS)]
    assert heights[BINS // 3] < heights[2 * BINS // 3] < heights[-1]
    assert heights[-1] > 0.8 * (PANEL_HEIGHT - PLOT_TOP - PLOT_BOTTOM)  # the tallest bin fills the plot's height
    assert write_histogram("C", CategoryScores(accepted={"s": [1.0, 1.0]}), tmp_path / "none.png") is None
