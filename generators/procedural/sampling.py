"""Turning what a task family asks for (object specs) into a laid-out scene, and the edits contrast pairs need."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from generators.procedural.layout import FreeSpace, SceneLayoutError, place_boxes, spacing_for
from generators.procedural.scene import SHAPE_KIND, Background, Box, Scene, SceneObject
from generators.procedural.signs import board_geometry, font_size_for
from generators.procedural.vocabulary import (
    BACKGROUND_COLORS,
    BOARD_COLORS,
    MIN_SMALL_RADIUS,
    OBJECT_COLORS,
    SIGN_WORDS,
    SIZE_FRACTIONS,
    SIZES,
)

SINGLE_COLOR_STYLES = ("solid", "speckle")


@dataclass(frozen=True)
class ObjectSpec:
    """What a family wants in the scene; layout decides where (and may shrink shapes to make room)."""

    kind: str = SHAPE_KIND
    shape: str = ""
    color: str = ""  # for boards: "" lets the scene pick a board colour unlike the background
    size: str = "medium"
    text: str = ""


def shape_radii(image_size: int) -> dict[str, int]:
    """Radius per size class; classes stay at least one pixel apart even at the smallest images."""
    radii: dict[str, int] = {}
    previous = MIN_SMALL_RADIUS - 1
    for size, fraction in SIZE_FRACTIONS.items():
        previous = max(previous + 1, round(fraction * image_size))
        radii[size] = previous
    return radii


def sample_background(rng: random.Random, image_size: int, styles: tuple[str, ...]) -> Background:
    style = rng.choice(styles)
    names = list(BACKGROUND_COLORS)
    first = rng.choice(names)
    second = first if style in SINGLE_COLOR_STYLES else rng.choice([n for n in names if n != first])
    period = max(3, image_size // rng.choice((5, 7, 9)))
    return Background(style=style, color_names=(first, second),
                      colors=(BACKGROUND_COLORS[first], BACKGROUND_COLORS[second]),
                      period=period, noise_seed=rng.getrandbits(31))


def fitting_words(kind: str, image_size: int) -> list[str]:
    """Sign words whose board fits inside the image with its border gap."""
    _, edge = spacing_for(image_size)
    font_size = font_size_for(image_size)
    room = image_size - 2 * edge
    geometries = {word: board_geometry(kind, word, font_size) for word in SIGN_WORDS}
    return [word for word, g in geometries.items() if g.width <= room and g.height <= room]


def footprint(spec: ObjectSpec, image_size: int) -> tuple[int, int]:
    if spec.kind == SHAPE_KIND:
        side = 2 * shape_radii(image_size)[spec.size] + 1
        return side, side
    geometry = board_geometry(spec.kind, spec.text, font_size_for(image_size))
    return geometry.width, geometry.height


def make_object(spec: ObjectSpec, box: Box, image_size: int) -> SceneObject:
    if spec.kind == SHAPE_KIND:
        radius = shape_radii(image_size)[spec.size]
        return SceneObject(kind=SHAPE_KIND, shape=spec.shape, color=spec.color, rgb=OBJECT_COLORS[spec.color],
                           size=spec.size, radius=radius, x=box.x0 + radius, y=box.y0 + radius, box=box)
    font_size = font_size_for(image_size)
    centre_x, centre_y = board_geometry(spec.kind, spec.text, font_size).board_centre
    return SceneObject(kind=spec.kind, shape="", color=spec.color, rgb=BOARD_COLORS[spec.color], size="",
                       radius=0, x=box.x0 + centre_x, y=box.y0 + centre_y, box=box, text=spec.text,
                       font_size=font_size)


def _shrunk(specs: list[ObjectSpec]) -> list[ObjectSpec] | None:
    """The specs with the largest shrinkable shape one size class smaller, or None when all are small."""
    candidates = [i for i, s in enumerate(specs) if s.kind == SHAPE_KIND and s.size != SIZES[0]]
    if not candidates:
        return None
    index = max(candidates, key=lambda i: SIZES.index(specs[i].size))
    smaller = SIZES[SIZES.index(specs[index].size) - 1]
    return [replace(s, size=smaller) if i == index else s for i, s in enumerate(specs)]


def sample_scene(rng: random.Random, image_size: int, specs: list[ObjectSpec], styles: tuple[str, ...]) -> Scene:
    """A square scene with a sampled background and the specs laid out without overlap.

    Raises SceneLayoutError when the objects do not fit even at the smallest size.
    """
    background = sample_background(rng, image_size, styles)
    board_colors = [n for n in BOARD_COLORS if n not in background.color_names]
    specs = [replace(s, color=rng.choice(board_colors)) if s.kind != SHAPE_KIND and not s.color else s for s in specs]
    gap, edge = spacing_for(image_size)
    attempt: list[ObjectSpec] | None = specs
    while attempt is not None:
        space = FreeSpace(image_size, image_size, gap, edge)
        try:
            boxes = place_boxes(rng, [footprint(s, image_size) for s in attempt], space)
        except SceneLayoutError:
            attempt = _shrunk(attempt)
            continue
        objects = tuple(make_object(s, b, image_size) for s, b in zip(attempt, boxes, strict=True))
        return Scene(width=image_size, height=image_size, background=background, objects=objects)
    raise SceneLayoutError(f"{len(specs)} objects do not fit in a {image_size} px image")


def _space_without(scene: Scene, skip: int | None = None) -> FreeSpace:
    gap, edge = spacing_for(scene.width)
    space = FreeSpace(scene.width, scene.height, gap, edge)
    for index, obj in enumerate(scene.objects):
        if index != skip:
            space.occupy(obj.box)
    return space


def with_added_shape(rng: random.Random, scene: Scene, spec: ObjectSpec) -> Scene | None:
    """The scene plus one more shape in free space, or None when there is no room."""
    width, height = footprint(spec, scene.width)
    box = _space_without(scene).find_spot(rng, width, height)
    if box is None:
        return None
    return scene.with_objects([*scene.objects, make_object(spec, box, scene.width)])


def with_moved_object(rng: random.Random, scene: Scene, index: int, x_range: tuple[int, int]) -> Scene | None:
    """The scene with object ``index`` moved to free space whose box lies within columns ``x_range``."""
    obj = scene.objects[index]
    box = _space_without(scene, skip=index).find_spot(rng, obj.box.width, obj.box.height, x_range=x_range)
    if box is None:
        return None
    moved = obj.moved_to(obj.x + box.x0 - obj.box.x0, obj.y + box.y0 - obj.box.y0)
    return scene.with_objects([moved if i == index else o for i, o in enumerate(scene.objects)])


def without_object(scene: Scene, index: int) -> Scene:
    return scene.with_objects([o for i, o in enumerate(scene.objects) if i != index])


def recolored(scene: Scene, index: int, color: str) -> Scene:
    obj = scene.objects[index]
    changed = replace(obj, color=color, rgb=OBJECT_COLORS[color])
    return scene.with_objects([changed if i == index else o for i, o in enumerate(scene.objects)])


def reshaped(scene: Scene, index: int, shape: str) -> Scene:
    changed = replace(scene.objects[index], shape=shape)
    return scene.with_objects([changed if i == index else o for i, o in enumerate(scene.objects)])
