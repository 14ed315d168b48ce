"""Dense labels of a procedural image from its scene graphs (a record's ``metadata.scenes``).

Which object covers each pixel is drawn exactly as the renderer draws it (shapes without anti-aliasing, boards
from their geometry), so the labels match the pixels. From that map come per-patch class shares (colour and
shape), the shape of the object centred in each patch, the background style, the number of shapes and which
(shape, colour) pairs the image holds: the targets with which ``train/vision_warmup.py`` teaches a vision tower
from scratch to see these scenes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from generators.procedural.render import fill_shape
from generators.procedural.signs import board_geometry
from generators.procedural.vocabulary import BACKGROUND_STYLES, OBJECT_COLORS, SHAPES

BACKGROUND = "background"
BOARD = "board"
COLOUR_CLASSES: tuple[str, ...] = (*OBJECT_COLORS, BOARD, BACKGROUND)  # a board's colours have names of their own
SHAPE_CLASSES: tuple[str, ...] = (*SHAPES, BOARD, BACKGROUND)
MAX_SHAPE_COUNT = 12  # both panels of a contrast pair; more is counted as 12
NO_CENTRE = -1
MAX_OBJECTS = 254  # object indices 1..254 in an 8-bit map, 0 is the background


@dataclass(frozen=True)
class SceneLabels:
    colour_shares: np.ndarray  # (patches, len(COLOUR_CLASSES)) float32: share of the patch's pixels per class
    shape_shares: np.ndarray  # (patches, len(SHAPE_CLASSES)) float32
    centre_shapes: np.ndarray  # (patches,) int64: shape class of the object whose centre is in it, NO_CENTRE if none
    background_style: int  # index in BACKGROUND_STYLES (the first panel's)
    shape_count: int  # shapes over every panel, at most MAX_SHAPE_COUNT
    # (len(SHAPES) * len(OBJECT_COLORS),) float32 multi-hot: 1 where a shape of that kind and colour is in any panel
    present_pairs: np.ndarray


def object_index_map(scenes: list[dict[str, Any]], size: int | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """uint8 map of which object covers each pixel (0: background, k: the k-th object in scene order) and the
    objects in that order: at the image's own size, or squashed to (size, size) as the image processor does."""
    if not scenes:
        raise ValueError("no scene graph: dense labels need metadata.scenes")
    canvas = Image.new("L", _canvas_size(scenes), 0)
    draw = ImageDraw.Draw(canvas)
    objects: list[dict[str, Any]] = []
    for scene in scenes:
        dx = scene["offset_x"]
        for obj in scene["objects"]:
            objects.append(obj)
            if len(objects) > MAX_OBJECTS:
                raise ValueError(f"more than {MAX_OBJECTS} objects in one image")
            _draw_object(draw, obj, dx, len(objects))
    if size is not None:
        canvas = canvas.resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(canvas), objects


def _canvas_size(scenes: list[dict[str, Any]]) -> tuple[int, int]:
    return max(s["offset_x"] + s["width"] for s in scenes), max(s["height"] for s in scenes)


def _draw_object(draw: ImageDraw.ImageDraw, obj: dict[str, Any], dx: int, index: int) -> None:
    if obj["kind"] == "shape":
        fill_shape(draw, obj["shape"], obj["x"] + dx, obj["y"], obj["radius"], index)
        return
    geometry = board_geometry(obj["kind"], obj["text"], obj["font_size"])
    left, top = obj["box"][0] + dx, obj["box"][1]
    for x0, y0, x1, y1 in (geometry.board, *geometry.frame_parts):
        draw.rectangle((left + x0, top + y0, left + x1, top + y1), fill=index)


def scene_labels(scenes: list[dict[str, Any]], size: int, patch: int) -> SceneLabels:
    """The labels of an image shown to a tower at ``size`` px with ``patch`` px patches (row-major patches)."""
    if size % patch:
        raise ValueError(f"image size {size} is not a multiple of the patch size {patch}")
    index_map, objects = object_index_map(scenes, size)
    colour_of = np.array([COLOUR_CLASSES.index(BACKGROUND)] + [_colour_class(o) for o in objects])
    shape_of = np.array([SHAPE_CLASSES.index(BACKGROUND)] + [_shape_class(o) for o in objects])
    grid = size // patch
    # (patches, pixels of a patch) object indices, patches row-major like the tower's patch sequence
    per_patch = index_map.reshape(grid, patch, grid, patch).transpose(0, 2, 1, 3).reshape(grid * grid, -1)

    def shares(classes: np.ndarray, count: int) -> np.ndarray:
        labels = classes[per_patch]
        return np.stack([(labels == c).mean(axis=1) for c in range(count)], axis=1).astype(np.float32)

    centres = np.full(grid * grid, NO_CENTRE, dtype=np.int64)
    width, height = _canvas_size(scenes)
    k = 0
    for scene in scenes:
        for obj in scene["objects"]:
            k += 1
            col = min(grid - 1, int((obj["x"] + scene["offset_x"]) * size / width) // patch)
            row = min(grid - 1, int(obj["y"] * size / height) // patch)
            centres[row * grid + col] = shape_of[k]
    shape_count = sum(o["kind"] == "shape" for o in objects)
    present_pairs = np.zeros(len(SHAPES) * len(OBJECT_COLORS), dtype=np.float32)
    for obj in objects:
        if obj["kind"] == "shape":
            present_pairs[pair_index(obj["shape"], obj["color"])] = 1.0
    return SceneLabels(
        colour_shares=shares(colour_of, len(COLOUR_CLASSES)),
        shape_shares=shares(shape_of, len(SHAPE_CLASSES)),
        centre_shapes=centres,
        background_style=BACKGROUND_STYLES.index(scenes[0]["background"]["style"]),
        shape_count=min(shape_count, MAX_SHAPE_COUNT),
        present_pairs=present_pairs,
    )


def pair_index(shape: str, colour: str) -> int:
    """Position of a (shape, colour) pair in ``SceneLabels.present_pairs``: shapes are rows, colours columns."""
    return SHAPES.index(shape) * len(OBJECT_COLORS) + list(OBJECT_COLORS).index(colour)


def _colour_class(obj: dict[str, Any]) -> int:
    if obj["kind"] != "shape":
        return COLOUR_CLASSES.index(BOARD)
    return COLOUR_CLASSES.index(obj["color"])


def _shape_class(obj: dict[str, Any]) -> int:
    return SHAPE_CLASSES.index(BOARD if obj["kind"] != "shape" else obj["shape"])
