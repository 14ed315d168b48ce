"""Test stages for the filter tests, loaded through the config's `plugins` list."""

import time

import numpy as np
from PIL import Image, ImageFilter
from pydantic import Field

from pipeline.record import ImageCandidate, SampleRecord
from pipeline.stage import Stage, StageParams, UnitContext, register_stage


class PauseParams(StageParams):
    seconds_per_sample: float = Field(0.05, ge=0)


@register_stage("test_pause")
class Pause(Stage):
    """Takes time and changes nothing, so a run can be killed mid-way without its data depending on it."""

    Params = PauseParams
    params: PauseParams

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        time.sleep(self.params.seconds_per_sample * len(records))


@register_stage("test_candidates")
class Candidates(Stage):
    """Best-of-N stand-in for a diffusion stage: the record's image, a blurred copy and a noisy copy."""

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        for record in records:
            image = record.image
            blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(2)))
            noise = np.random.default_rng(record.seed % 2**32).integers(-60, 60, image.shape)
            noisy = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
            record.candidates = [ImageCandidate(record.seed + i, candidate)
                                 for i, candidate in enumerate((image, blurred, noisy))]
            record.image = None
