"""Image encoding with fixed settings, so the same pixels always give the same JPEG bytes."""

from __future__ import annotations

import io

from PIL import Image


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    # Explicit subsampling and no optimize/progressive passes: the byte stream depends only on the pixels.
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, subsampling=2, optimize=False)
    return buffer.getvalue()


def decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")
