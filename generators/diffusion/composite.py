"""Contrast pairs: the left and right renders composited side by side, as the procedural contrast images are."""

from __future__ import annotations

import numpy as np

from generators.procedural.render import side_by_side
from pipeline.images import to_array, to_pil


def composite_side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``(H, 2W + separator, 3)`` from two ``(H, W, 3)`` panels."""
    if left.shape != right.shape:
        raise ValueError(f"contrast panels differ in shape: {left.shape} vs {right.shape}")
    return to_array(side_by_side(to_pil(left), to_pil(right)))
