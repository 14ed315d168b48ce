"""The scene graph: a background and non-overlapping objects, plus the spatial facts derived from it.

Every relation used by captions and questions is defined here on pixel bounding boxes, so "left of" means
the same thing to the caption writer, the question writer and anyone re-checking a sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from generators.procedural.vocabulary import RGB

SHAPE_KIND = "shape"


@dataclass(frozen=True)
class Box:
    """Inclusive pixel bounds: the object may paint pixels x0..x1, y0..y1 and nothing outside."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0 + 1

    @property
    def height(self) -> int:
        return self.y1 - self.y0 + 1

    def shifted(self, dx: int, dy: int) -> Box:
        return Box(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


@dataclass(frozen=True)
class Background:
    style: str  # one of vocabulary.BACKGROUND_STYLES
    color_names: tuple[str, str]  # the second equals the first for single-colour styles
    colors: tuple[RGB, RGB]
    period: int  # stripe width / checker cell in px
    noise_seed: int  # speckle noise; kept in the graph so rendering is a pure function of the scene


@dataclass(frozen=True)
class SceneObject:
    """A flat shape, or a board (sign, poster, billboard, banner) carrying one word of text.

    ``x, y`` is the centre of the shape or of the board; ``box`` also covers posts, legs and strings.
    """

    kind: str  # "shape" or one of vocabulary.SIGN_KINDS
    shape: str  # "" for boards
    color: str  # object colour name, or the board colour name
    rgb: RGB
    size: str  # size class for shapes, "" for boards
    radius: int  # shapes: half the side of the square the shape is drawn in; boards: 0
    x: int
    y: int
    box: Box
    text: str = ""
    font_size: int = 0

    @property
    def is_shape(self) -> bool:
        return self.kind == SHAPE_KIND

    def moved_to(self, x: int, y: int) -> SceneObject:
        return replace(self, x=x, y=y, box=self.box.shifted(x - self.x, y - self.y))


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: Background
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)

    @property
    def shapes(self) -> list[SceneObject]:
        return [o for o in self.objects if o.is_shape]

    @property
    def boards(self) -> list[SceneObject]:
        return [o for o in self.objects if not o.is_shape]

    def with_objects(self, objects: list[SceneObject]) -> Scene:
        return replace(self, objects=tuple(objects))

    def to_json(self, offset_x: int = 0) -> dict[str, Any]:
        """Plain JSON whose structure is the same for every scene (no None, no empty lists).

        ``offset_x`` is where the scene's left edge sits in the final image (the right panel of a contrast pair).
        """
        background = self.background
        return {
            "width": self.width,
            "height": self.height,
            "offset_x": offset_x,
            "background": {"style": background.style, "color_names": list(background.color_names),
                           "colors": [list(c) for c in background.colors], "period": background.period,
                           "noise_seed": background.noise_seed},
            "objects": [
                {"kind": o.kind, "shape": o.shape, "color": o.color, "rgb": list(o.rgb), "size": o.size,
                 "radius": o.radius, "x": o.x, "y": o.y, "box": o.box.as_list(), "text": o.text,
                 "font_size": o.font_size}
                for o in self.objects
            ],
        }


# --- spatial facts -----------------------------------------------------------------------------------------

def left_of(a: SceneObject, b: SceneObject) -> bool:
    """``a`` lies entirely left of ``b`` (no shared pixel column)."""
    return a.box.x1 < b.box.x0


def above(a: SceneObject, b: SceneObject) -> bool:
    """``a`` lies entirely above ``b`` (no shared pixel row)."""
    return a.box.y1 < b.box.y0


def horizontal_relation(a: SceneObject, b: SceneObject) -> str:
    """"left" or "right" when the boxes are separated horizontally, else ""."""
    if left_of(a, b):
        return "left"
    if left_of(b, a):
        return "right"
    return ""


def vertical_relation(a: SceneObject, b: SceneObject) -> str:
    """"above" or "below" when the boxes are separated vertically, else ""."""
    if above(a, b):
        return "above"
    if above(b, a):
        return "below"
    return ""


def dominant_relation(a: SceneObject, b: SceneObject) -> str:
    """The relation of ``a`` to ``b`` along the axis with the wider gap: left, right, above or below.

    Laid-out objects never overlap, so at least one axis separates them.
    """
    horizontal_gap = max(b.box.x0 - a.box.x1, a.box.x0 - b.box.x1)
    vertical_gap = max(b.box.y0 - a.box.y1, a.box.y0 - b.box.y1)
    if horizontal_gap >= vertical_gap:
        return horizontal_relation(a, b)
    return vertical_relation(a, b)


def region(obj: SceneObject, width: int, height: int) -> tuple[str, str]:
    """(row, column) of the object's centre in a 3x3 grid: ("top"|"middle"|"bottom", "left"|"centre"|"right")."""
    column = ("left", "centre", "right")[min(2, obj.x * 3 // width)]
    row = ("top", "middle", "bottom")[min(2, obj.y * 3 // height)]
    return row, column


def image_side(obj: SceneObject, width: int, height: int) -> str:
    """"left" or "right" when the centre lies in that third of the image; "" for the middle third, so a side
    answer never contradicts an "in the centre" in the description."""
    _, column = region(obj, width, height)
    return "" if column == "centre" else column


def count_where(scene: Scene, *, shape: str = "", color: str = "") -> int:
    """Shapes matching every given attribute."""
    return sum(1 for o in scene.shapes if (not shape or o.shape == shape) and (not color or o.color == color))
