"""A PNG contact sheet of the samples the inspector shows: one row per category, accepted then rejected,
each thumbnail framed green (accepted) or red (rejected)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw

from pipeline.fileio import atomic_write_bytes

THUMB = 96
FRAME = 4
LABEL = 110
COLORS = {"accepted": (58, 125, 68), "rejected": (192, 57, 43)}


def write_contact_sheet(shown: dict, path: Path) -> Path | None:
    rows = [(category, [s for s in samples if s.image]) for category, samples in shown.items()]
    rows = [(c, s) for c, s in rows if s]
    if not rows:
        return None
    cell = THUMB + 2 * FRAME
    width = LABEL + cell * max(len(samples) for _, samples in rows)
    sheet = Image.new("RGB", (width, cell * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (category, samples) in enumerate(rows):
        draw.text((4, row * cell + cell // 2 - 6), category, fill=(0, 0, 0))
        for column, sample in enumerate(samples):
            x, y = LABEL + column * cell, row * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=COLORS[sample.status])
            thumb = Image.open(io.BytesIO(sample.image)).convert("RGB")
            thumb.thumbnail((THUMB, THUMB))
            sheet.paste(thumb, (x + FRAME, y + FRAME))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path
