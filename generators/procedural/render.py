"""Rendering a scene graph with PIL: numpy backgrounds, shapes without anti-aliasing, boards with text.

Shapes are filled polygons/ellipses with no anti-aliasing, so each shape's pixels carry exactly its RGB and
a pixel-level check can count and locate them.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from generators.procedural.scene import Background, Scene, SceneObject
from generators.procedural.signs import board_geometry, sign_font
from generators.procedural.vocabulary import SEPARATOR_RGB, SIGN_FRAME_RGB, SIGN_TEXT_RGB, SPECKLE_AMPLITUDE

STAR_INNER_RATIO = 0.5


def separator_width(panel_width: int) -> int:
    return max(2, panel_width // 32)


def background_pixels(background: Background, width: int, height: int) -> np.ndarray:
    first = np.array(background.colors[0], dtype=np.float64)
    second = np.array(background.colors[1], dtype=np.float64)
    ys, xs = np.mgrid[0:height, 0:width]
    style = background.style
    if style == "solid":
        weight = np.zeros((height, width))
    elif style == "vertical_gradient":
        weight = ys / max(1, height - 1)
    elif style == "horizontal_gradient":
        weight = xs / max(1, width - 1)
    elif style == "stripes":
        weight = ((xs // background.period) % 2).astype(np.float64)
    elif style == "checker":
        weight = ((xs // background.period + ys // background.period) % 2).astype(np.float64)
    elif style == "speckle":
        noise = np.random.default_rng(background.noise_seed).integers(
            -SPECKLE_AMPLITUDE, SPECKLE_AMPLITUDE + 1, size=(height, width, 1))
        # One offset for all three channels: the colour stays as grey-ish as its base.
        return np.clip(first + noise, 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"unknown background style {style!r}")
    pixels = first + weight[..., None] * (second - first)
    return np.rint(pixels).astype(np.uint8)


def shape_outline(shape: str, x: int, y: int, r: int) -> list[tuple[int, int]]:
    """Polygon vertices of a shape centred on (x, y) inside the square of radius r; [] for circle/square."""
    def ring(count: int, start_degrees: float, radii: tuple[float, ...]) -> list[tuple[int, int]]:
        points = []
        for k in range(count):
            angle = math.radians(start_degrees + 360.0 * k / count)
            radius = radii[k % len(radii)]
            points.append((x + round(radius * math.cos(angle)), y + round(radius * math.sin(angle))))
        return points

    if shape == "triangle":
        return [(x, y - r), (x + r, y + r), (x - r, y + r)]
    if shape == "diamond":
        return [(x, y - r), (x + r, y), (x, y + r), (x - r, y)]
    if shape == "hexagon":
        return ring(6, 0.0, (r,))
    if shape == "star":
        return ring(10, -90.0, (r, STAR_INNER_RATIO * r))
    return []


def fill_shape(draw: ImageDraw.ImageDraw, shape: str, x: int, y: int, r: int, fill: int | tuple[int, ...]) -> None:
    """Draw ``shape`` centred on (x, y) in the square of radius r, without anti-aliasing."""
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    else:
        outline = shape_outline(shape, x, y, r)
        if not outline:
            raise ValueError(f"unknown shape {shape!r}")
        draw.polygon(outline, fill=fill)


def draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    fill_shape(draw, obj.shape, obj.x, obj.y, obj.radius, obj.rgb)


def draw_board(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    geometry = board_geometry(obj.kind, obj.text, obj.font_size)
    left, top = obj.box.x0, obj.box.y0
    for x0, y0, x1, y1 in geometry.frame_parts:
        draw.rectangle((left + x0, top + y0, left + x1, top + y1), fill=SIGN_FRAME_RGB)
    x0, y0, x1, y1 = geometry.board
    draw.rectangle((left + x0, top + y0, left + x1, top + y1), fill=obj.rgb,
                   outline=SIGN_FRAME_RGB if geometry.has_border else None)
    origin_x, origin_y = geometry.text_origin
    draw.text((left + origin_x, top + origin_y), obj.text, font=sign_font(obj.font_size), fill=SIGN_TEXT_RGB)


def render_scene(scene: Scene) -> Image.Image:
    image = Image.fromarray(background_pixels(scene.background, scene.width, scene.height), mode="RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        if obj.is_shape:
            draw_shape(draw, obj)
        else:
            draw_board(draw, obj)
    return image


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    """Two equal panels with a thin grey-ish separator: width 2W + separator, height H."""
    width, height = left.size
    gap = separator_width(width)
    canvas = Image.new("RGB", (2 * width + gap, height), SEPARATOR_RGB)
    canvas.paste(left, (0, 0))
    canvas.paste(right, (width + gap, 0))
    return canvas
