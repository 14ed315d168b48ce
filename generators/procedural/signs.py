"""Geometry of boards that carry text (sign, poster, billboard, banner) and the font that writes on them.

Layout needs a board's footprint before anything is drawn and the renderer needs its parts, so both read
the same ``BoardGeometry``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from PIL import ImageFont

Rect = tuple[int, int, int, int]  # inclusive x0, y0, x1, y1, relative to the footprint's top-left corner

FONT_FRACTION = 0.13  # font size as a fraction of the image side
MIN_FONT_SIZE = 8


@lru_cache(maxsize=64)
def sign_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def font_size_for(image_size: int) -> int:
    return max(MIN_FONT_SIZE, round(FONT_FRACTION * image_size))


@dataclass(frozen=True)
class BoardGeometry:
    width: int  # footprint, including posts, legs or strings
    height: int
    board: Rect
    frame_parts: tuple[Rect, ...]  # posts, legs or strings, drawn in the frame colour
    has_border: bool  # posters get a one-pixel frame-coloured border
    text_origin: tuple[int, int]  # where PIL's draw.text must start so the ink sits centred on the board

    @property
    def board_centre(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.board
        return (x0 + x1) // 2, (y0 + y1) // 2


@lru_cache(maxsize=4096)
def board_geometry(kind: str, text: str, font_size: int) -> BoardGeometry:
    left, top, right, bottom = sign_font(font_size).getbbox(text)
    ink_width, ink_height = right - left, bottom - top
    pad = max(2, font_size // 4)
    pad_x = 2 * pad if kind == "billboard" else pad
    border = 1 if kind == "poster" else 0
    board_width = ink_width + 2 * (pad_x + border)
    board_height = ink_height + 2 * (pad + border)
    bar = max(2, font_size // 5)  # width of posts and legs

    board_top = 0
    frame_parts: list[Rect] = []
    footprint_height = board_height
    if kind in ("sign", "billboard"):
        # A sign stands on one post, a billboard on two legs, both below the board.
        stand_height = max(3, board_height // 2)
        centres = (board_width // 2,) if kind == "sign" else (board_width // 4, 3 * board_width // 4)
        for centre in centres:
            left_edge = centre - bar // 2
            frame_parts.append((left_edge, board_height, left_edge + bar - 1, board_height + stand_height - 1))
        footprint_height += stand_height
    elif kind == "banner":
        string_height = max(2, board_height // 3)
        board_top = string_height
        for string_x in (1, board_width - 2):
            frame_parts.append((string_x, 0, string_x, string_height - 1))
        footprint_height += string_height

    board = (0, board_top, board_width - 1, board_top + board_height - 1)
    text_origin = (pad_x + border - left, board_top + pad + border - top)
    return BoardGeometry(board_width, footprint_height, board, tuple(frame_parts), kind == "poster", text_origin)
