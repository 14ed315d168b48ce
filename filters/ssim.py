"""SSIM_a, FUSION's detail score (DATA.md step 4):

    SSIM_a = SSIM(I, up(down(I, 384))) + 0.25 * sum over the 2x2 quadrants q of SSIM(I_q, up(down(I_q, 384)))

``down`` resizes to the vision encoder's square input (384 x 384, as SigLIP's processor does, bicubic) and
``up`` back to the original size, so each term says how much of the image survives the encoder's resize;
the range is [-2, 2] and 2 means nothing is lost. It rewards images whose detail the encoder can see at
its resolution: detail finer than 384 px is lost in the round trip and lowers the score, while an image
with no fine detail at all (a blurred one) survives it intact and scores near 2. It is not a sharpness
score.

SSIM is scikit-image's ``structural_similarity`` with the settings of Wang et al. (2004): an 11-tap
Gaussian window of sigma 1.5, population covariances, K1=0.01, K2=0.03, on the 0-255 range, averaged
over the RGB channels. scikit-image is the maintained reference implementation; it runs on numpy in the
CPU task that scores the unit, needs no torch, and takes any image size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

ENCODER_SIZE = 384
QUADRANT_WEIGHT = 0.25


def resize_round_trip(image: np.ndarray, size: int = ENCODER_SIZE) -> np.ndarray:
    """``up(down(image, size))``: to size x size and back, bicubic both ways."""
    height, width = image.shape[:2]
    pil = Image.fromarray(image)
    return np.asarray(pil.resize((size, size), Image.BICUBIC).resize((width, height), Image.BICUBIC))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    side = min(a.shape[:2])
    if side >= 11:  # the Gaussian window is 11 px wide
        return float(structural_similarity(a, b, channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False))
    if side >= 3:  # crops of tiny images: a uniform window that fits
        return float(structural_similarity(a, b, channel_axis=2, data_range=255, win_size=side - (side + 1) % 2,
                                           use_sample_covariance=False))
    return 1.0 if np.array_equal(a, b) else 0.0


def survival(image: np.ndarray, size: int = ENCODER_SIZE) -> float:
    return ssim(image, resize_round_trip(image, size))


def quadrants(image: np.ndarray) -> list[np.ndarray]:
    height, width = image.shape[:2]
    h, w = height // 2, width // 2
    return [image[:h, :w], image[:h, w:], image[h:, :w], image[h:, w:]]


def ssim_a(image: np.ndarray, size: int = ENCODER_SIZE) -> float:
    """SSIM_a of an (H, W, 3) uint8 RGB image."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"SSIM_a needs an (H, W, 3) RGB image, got shape {image.shape}")
    return survival(image, size) + QUADRANT_WEIGHT * sum(survival(np.ascontiguousarray(q), size)
                                                         for q in quadrants(image))
