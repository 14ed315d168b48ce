"""SSIM_a exactly as DATA.md defines it, with scikit-image's SSIM, and what it ranks."""

import numpy as np
import pytest
from PIL import Image, ImageFilter
from skimage.metrics import structural_similarity

from filters.ssim import ssim_a
from tests.stage_helpers import run_stages


def detailed_image(size=768, seed=0):
    """Fine texture (2 px stripes and noise) over coarse shapes: detail finer than 384 px."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[:, :, 0] = ((np.arange(size) // 2) % 2 * 200)[None, :]
    image[: size // 2, :, 1] = 180
    image[:, :, 2] = rng.integers(0, 255, (size, size))
    return image


def reference_ssim_a(image):
    """The formula spelled out: the whole image and its four quadrants, each against up(down(., 384))."""
    def term(part):
        pil = Image.fromarray(part)
        round_trip = np.asarray(pil.resize((384, 384), Image.BICUBIC).resize(pil.size, Image.BICUBIC))
        return structural_similarity(part, round_trip, channel_axis=2, data_range=255, gaussian_weights=True,
                                     sigma=1.5, use_sample_covariance=False)
    h, w = image.shape[0] // 2, image.shape[1] // 2
    parts = [image[:h, :w], image[:h, w:], image[h:, :w], image[h:, w:]]
    return term(image) + 0.25 * sum(term(np.ascontiguousarray(p)) for p in parts)


def test_ssim_a_is_the_formula_of_data_md():
    image = detailed_image(520)
    assert ssim_a(image) == pytest.approx(reference_ssim_a(image), abs=1e-9)


def test_detail_the_encoder_loses_lowers_ssim_a_and_detail_it_keeps_does_not():
    """SSIM_a measures what survives the 384 px resize: an image whose detail is finer than the encoder sees
    scores below its blurred copy, which loses nothing in the round trip; an image with the same coarse
    content at the encoder's resolution, upscaled, scores near the maximum of 2."""
    sharp = detailed_image()
    blurred = np.asarray(Image.fromarray(sharp).filter(ImageFilter.GaussianBlur(3)))
    encoder_sized = np.asarray(Image.fromarray(sharp).resize((384, 384), Image.BICUBIC).resize((768, 768),
                                                                                             Image.BICUBIC))
    scores = {name: ssim_a(image) for name, image in
              (("sharp", sharp), ("blurred", blurred), ("encoder_sized", encoder_sized))}
    assert scores["sharp"] < 1.8 < 1.95 < scores["blurred"] <= 2.0, scores
    assert scores["encoder_sized"] > scores["sharp"] + 0.15, scores
    assert ssim_a(np.full((64, 64, 3), 90, dtype=np.uint8)) == pytest.approx(2.0)


def test_detail_score_stage_scores_candidates_and_choose_keeps_the_best_total(tmp_path):
    from pipeline.record import ImageCandidate, SampleRecord

    sharp = detailed_image(400)
    blurred = np.asarray(Image.fromarray(sharp).filter(ImageFilter.GaussianBlur(2)))
    rec = SampleRecord(key="k_0", category="SynthColor", split="train", seed=1, caption="stripes",
                       candidates=[ImageCandidate(11, sharp), ImageCandidate(12, blurred)])
    rec.scores.update({"clip/candidate_0/clip_cosine": 0.30, "clip/candidate_1/clip_cosine": 0.25})
    run_stages([{"name": "detail_score"},
                {"name": "image_total", "params": {"clip": "clip/clip_cosine"}},
                {"name": "choose_image", "params": {"score": "image_total/total"}}], [rec])
    totals = [rec.scores[f"image_total/candidate_{i}/total"] for i in range(2)]
    assert totals == pytest.approx([0.30 + 0.5 * rec.scores["detail_score/candidate_0/ssim_a"],
                                    0.25 + 0.5 * rec.scores["detail_score/candidate_1/ssim_a"]])
    best = int(np.argmax(totals))
    assert rec.scores["choose_image/chosen_index"] == best and rec.metadata["image_seed"] == 11 + best
    assert rec.scores["image_total/total"] == totals[best]
    assert rec.scores["detail_score/ssim_a"] == rec.scores[f"detail_score/candidate_{best}/ssim_a"]
    assert rec.candidates == [] and rec.image is (sharp, blurred)[best]


def test_thresholds_reject_with_the_value_in_the_reason():
    from pipeline.record import SampleRecord

    rec = SampleRecord(key="k_0", category="SynthColor", split="train", seed=1, image=detailed_image(400))
    run_stages([{"name": "detail_score", "params": {"min_ssim_a": 1.9}}], [rec])
    assert rec.is_rejected and rec.reject_reason.startswith("low_detail: SSIM_a ") and "< 1.9" in rec.reject_reason
