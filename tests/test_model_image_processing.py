"""static_hd preprocessing: row-major tiles of the 2x2 grid, then the full view, SigLIP-normalised."""

from __future__ import annotations

import torch
from PIL import Image

from model.config import ImageConfig
from model.image_processing import StaticHdImageProcessor

QUADRANT_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]  # TL, TR, BL, BR


def quadrant_image(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height))
    half_w, half_h = width // 2, height // 2
    boxes = [(0, 0, half_w, half_h), (half_w, 0, width, half_h),
             (0, half_h, half_w, height), (half_w, half_h, width, height)]
    for box, colour in zip(boxes, QUADRANT_COLOURS):
        image.paste(colour, box)
    return image


def test_tiles_are_row_major_quadrants_then_the_full_view():
    processor = StaticHdImageProcessor(ImageConfig(image_size=16, tile_grid=2, resample="bilinear"))
    views = processor(quadrant_image(60, 44))  # aspect ratio is not kept, as in the paper
    assert views.shape == (5, 3, 16, 16)
    for tile, colour in zip(views[:4], QUADRANT_COLOURS):
        expected = (torch.tensor(colour, dtype=torch.float32) / 255 - 0.5) / 0.5
        centre = tile[:, 4:12, 4:12]  # away from the resampling seam
        assert torch.allclose(centre, expected.view(3, 1, 1).expand_as(centre), atol=1e-6)
    full = views[4]
    for (rows, cols), colour in zip([((0, 6), (0, 6)), ((0, 6), (10, 16)), ((10, 16), (0, 6)), ((10, 16), (10, 16))],
                                    QUADRANT_COLOURS):
        patch = full[:, rows[0]:rows[1], cols[0]:cols[1]]
        expected = (torch.tensor(colour, dtype=torch.float32) / 255 - 0.5) / 0.5
        assert torch.allclose(patch, expected.view(3, 1, 1).expand_as(patch), atol=1e-6)


def test_siglip_normalisation_maps_0_and_255_to_minus_one_and_one():
    processor = StaticHdImageProcessor(ImageConfig(image_size=8, tile_grid=3))
    black = processor(Image.new("RGB", (10, 10), (0, 0, 0)))
    white = processor(Image.new("L", (10, 10), 255))  # greyscale input is converted to RGB
    assert black.shape == (10, 3, 8, 8) and processor.num_views == 10
    assert torch.all(black == -1.0) and torch.all(white == 1.0)
