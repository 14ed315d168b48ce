"""Images between stages are lossless RGB arrays; they are encoded once, by the writer.

Encoding uses fixed settings so the same pixels always give the same bytes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Output formats the writer can encode, by the extension of the tar member.
IMAGE_FORMATS = ("jpg", "png", "webp")


def to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array; arrays are checked, PIL images converted."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"an image must be an (H, W, 3) uint8 RGB array, got {array.dtype} {array.shape}")
    return array


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(to_array(image), mode="RGB")


def encode_image(image: np.ndarray, image_format: str, quality: int) -> bytes:
    """Encode for a shard member of extension ``image_format`` (jpg, png or webp)."""
    buffer = io.BytesIO()
    picture = to_pil(image)
    if image_format == "jpg":
        # Explicit subsampling and no optimize/progressive passes: the byte stream depends only on the pixels.
        picture.save(buffer, format="JPEG", quality=quality, subsampling=2, optimize=False)
    elif image_format == "png":
        picture.save(buffer, format="PNG", compress_level=6, optimize=False)
    elif image_format == "webp":
        picture.save(buffer, format="WEBP", quality=quality, method=4)
    else:
        raise ValueError(f"unknown image format {image_format!r}; known: {', '.join(IMAGE_FORMATS)}")
    return buffer.getvalue()


def encode_png(image: np.ndarray) -> bytes:
    """Lossless bytes of an array, e.g. for caching a generated image."""
    return encode_image(image, "png", 100)


def decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def decode_array(data: bytes) -> np.ndarray:
    return to_array(decode_image(data))
