"""Closed vocabularies of the procedural scenes: shapes, colours, sizes, backgrounds, signs and sign words.

Object colours are saturated (channel spread >= 120) and every other colour that is ever drawn (backgrounds,
sign boards, sign text, posts, the contrast separator) is grey-ish (spread <= 60). Blending two grey-ish
colours stays grey-ish, so no non-object pixel can equal an object colour and the rendered pixels can be
checked against the scene graph exactly.
"""

from __future__ import annotations

RGB = tuple[int, int, int]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "hexagon")
SHAPE_PLURALS: dict[str, str] = {shape: shape + "s" for shape in SHAPES}

OBJECT_COLORS: dict[str, RGB] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (235, 210, 20),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "purple": (140, 50, 200),
    "pink": (240, 100, 180),
    "brown": (155, 85, 25),
}

# Size class -> shape radius as a fraction of the image side; radii are forced apart at small images.
SIZE_FRACTIONS: dict[str, float] = {"small": 0.085, "medium": 0.115, "large": 0.145}
SIZES: tuple[str, ...] = tuple(SIZE_FRACTIONS)
MIN_SMALL_RADIUS = 3  # a 7 px shape still survives as a connected blob at 32 px

BACKGROUND_COLORS: dict[str, RGB] = {
    "white": (245, 245, 245),
    "light grey": (200, 200, 200),
    "grey": (150, 150, 150),
    "dark grey": (90, 90, 90),
    "charcoal": (50, 50, 55),
    "beige": (230, 220, 195),
    "sand": (210, 195, 165),
    "slate": (120, 130, 145),
    "cream": (250, 245, 225),
    "stone": (175, 170, 160),
}

# Background style -> the word a question about its pattern is answered with.
BACKGROUND_PATTERNS: dict[str, str] = {
    "solid": "plain",
    "vertical_gradient": "gradient",
    "horizontal_gradient": "gradient",
    "stripes": "striped",
    "checker": "checkered",
    "speckle": "speckled",
}
BACKGROUND_STYLES: tuple[str, ...] = tuple(BACKGROUND_PATTERNS)
PATTERN_ANSWERS: tuple[str, ...] = ("plain", "gradient", "striped", "checkered", "speckled")
SPECKLE_AMPLITUDE = 24  # the same grey offset on all channels keeps the spread of the base colour

SIGN_KINDS: tuple[str, ...] = ("sign", "poster", "billboard", "banner")
BOARD_COLORS: dict[str, RGB] = {
    "white": (250, 250, 250),
    "cream": (245, 238, 215),
    "silver": (205, 205, 212),
}
SIGN_TEXT_RGB: RGB = (25, 25, 30)
SIGN_FRAME_RGB: RGB = (70, 70, 75)  # posts, legs, strings and poster borders
SEPARATOR_RGB: RGB = (40, 40, 40)

SIGN_WORDS: tuple[str, ...] = (
    "OPEN", "SALE", "CAFE", "HOTEL", "EXIT", "STOP", "BOOKS", "PIZZA", "MUSIC", "PARK", "SHOP", "BANK",
    "TAXI", "FOOD", "RENT", "JAZZ", "FARM", "ZOO", "GYM", "ART", "FILM", "TEA", "SOUP", "FRUIT", "TOYS",
    "MAPS", "SHOES", "BREAD", "MILK", "FISH", "CAKE", "WELCOME", "GARDEN", "POOL",
)

DIFFERENCE_KINDS: tuple[str, ...] = ("colour", "count", "shape", "placement")  # what a contrast pair changes

COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
MAX_COUNT_ANSWER = 6  # counting answers and distractors come from 0..6


def vocabulary_snapshot() -> dict[str, object]:
    """Every vocabulary as plain JSON, for the template fingerprint."""
    return {
        "shapes": list(SHAPES),
        "object_colors": {name: list(rgb) for name, rgb in OBJECT_COLORS.items()},
        "size_fractions": SIZE_FRACTIONS,
        "min_small_radius": MIN_SMALL_RADIUS,
        "background_colors": {name: list(rgb) for name, rgb in BACKGROUND_COLORS.items()},
        "background_patterns": BACKGROUND_PATTERNS,
        "sign_kinds": list(SIGN_KINDS),
        "board_colors": {name: list(rgb) for name, rgb in BOARD_COLORS.items()},
        "sign_words": list(SIGN_WORDS),
        "difference_kinds": list(DIFFERENCE_KINDS),
        "count_words": list(COUNT_WORDS),
    }
