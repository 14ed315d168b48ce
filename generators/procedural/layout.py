"""Placing boxes without overlap: every free position is found at once from a summed-area table.

Choosing uniformly among all free positions (instead of guessing and retrying) keeps dense scenes at small
image sizes reliable and costs a few array operations per object.
"""

from __future__ import annotations

import random

import numpy as np

from generators.procedural.scene import Box


class SceneLayoutError(RuntimeError):
    """The requested objects do not fit in the image with the required spacing."""


def spacing_for(image_size: int) -> tuple[int, int]:
    """(gap between objects, gap to the image border) in px; one empty pixel keeps objects apart."""
    return max(1, image_size // 32), max(1, image_size // 64)


class FreeSpace:
    """The pixels of one image already claimed by object boxes (grown by the gap)."""

    def __init__(self, width: int, height: int, gap: int, edge: int) -> None:
        self.width, self.height, self.gap, self.edge = width, height, gap, edge
        self.occupied = np.zeros((height, width), dtype=np.int32)

    def occupy(self, box: Box) -> None:
        self.occupied[box.y0:box.y1 + 1, box.x0:box.x1 + 1] = 1

    def find_spot(self, rng: random.Random, width: int, height: int,
                  x_range: tuple[int, int] | None = None) -> Box | None:
        """A uniformly chosen free box of ``width`` x ``height``, optionally with x0..x1 inside ``x_range``."""
        low_x, high_x = self.edge, self.width - self.edge - width
        if x_range is not None:
            low_x, high_x = max(low_x, x_range[0]), min(high_x, x_range[1] - width + 1)
        low_y, high_y = self.edge, self.height - self.edge - height
        if low_x > high_x or low_y > high_y:
            return None
        xs = np.arange(low_x, high_x + 1)
        ys = np.arange(low_y, high_y + 1)
        table = np.zeros((self.height + 1, self.width + 1), dtype=np.int64)
        table[1:, 1:] = self.occupied.cumsum(0).cumsum(1)
        # Claimed pixels inside each candidate box grown by the gap, for all candidates at once.
        c0 = np.maximum(xs - self.gap, 0)
        c1 = np.minimum(xs + width + self.gap, self.width)
        r0 = np.maximum(ys - self.gap, 0)[:, None]
        r1 = np.minimum(ys + height + self.gap, self.height)[:, None]
        claimed = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
        free = np.flatnonzero(claimed == 0)
        if free.size == 0:
            return None
        row, column = divmod(int(free[rng.randrange(free.size)]), xs.size)
        x0, y0 = int(xs[column]), int(ys[row])
        return Box(x0, y0, x0 + width - 1, y0 + height - 1)


def place_boxes(rng: random.Random, sizes: list[tuple[int, int]], space: FreeSpace, attempts: int = 8) -> list[Box]:
    """Boxes of the given (width, height) placed without overlap, in the order given.

    The largest go first so they still find room; a dead end restarts the whole layout.
    """
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i][0] * sizes[i][1])
    base = space.occupied.copy()
    for _ in range(attempts):
        space.occupied = base.copy()
        boxes: dict[int, Box] = {}
        for index in order:
            box = space.find_spot(rng, *sizes[index])
            if box is None:
                break
            space.occupy(box)
            boxes[index] = box
        if len(boxes) == len(sizes):
            return [boxes[i] for i in range(len(sizes))]
    space.occupied = base
    raise SceneLayoutError(f"could not place {len(sizes)} boxes {sizes} in {space.width}x{space.height} px")
