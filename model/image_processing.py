"""static_hd image preprocessing: a grid of high-resolution tiles plus one full view, SigLIP-normalised.

For a 2x2 grid and 384 px views the image is resized to 768x768 and cut row-major into four 384x384 tiles
(TL, TR, BL, BR); the fifth view is the whole image resized to 384x384. No aspect ratio is kept, as in the paper.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from model.config import ImageConfig

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class StaticHdImageProcessor:
    def __init__(self, config: ImageConfig) -> None:
        self.image_size = config.image_size
        self.tile_grid = config.tile_grid
        self.resample = _RESAMPLE[config.resample]
        self.mean = torch.tensor(config.image_mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(config.image_std, dtype=torch.float32).view(3, 1, 1)

    @property
    def num_views(self) -> int:
        """Tiles plus the full view; the full view is always last."""
        return self.tile_grid**2 + 1

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """(tile_grid**2 + 1, 3, image_size, image_size): the tiles in row-major order, then the full view."""
        image = image.convert("RGB")
        size = self.image_size
        big = image.resize((size * self.tile_grid, size * self.tile_grid), self.resample)
        tiles = [
            big.crop((col * size, row * size, (col + 1) * size, (row + 1) * size))
            for row in range(self.tile_grid)
            for col in range(self.tile_grid)
        ]
        full = image.resize((size, size), self.resample)
        return torch.stack([self.normalize(view) for view in (*tiles, full)])

    def normalize(self, image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255.0
        return (pixels - self.mean) / self.std
