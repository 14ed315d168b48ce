"""Dense labels from scene graphs match the rendered pixels: every pixel labelled with a shape has that shape's
exact colour and every pixel of a shape is labelled, for every family (contrast pairs and boards included)."""

from __future__ import annotations

import numpy as np
import pytest

from generators.procedural import family_names
from generators.procedural.labels import (
    BACKGROUND,
    COLOUR_CLASSES,
    NO_CENTRE,
    SHAPE_CLASSES,
    object_index_map,
    pair_index,
    scene_labels,
)
from generators.procedural.params import ProceduralParams
from generators.procedural.sample import generate_sample
from generators.procedural.vocabulary import BACKGROUND_STYLES, OBJECT_COLORS, SHAPES


@pytest.mark.parametrize("family", family_names())
def test_the_index_map_covers_exactly_each_shapes_pixels(family):
    params = ProceduralParams(image_size=64)
    for seed in range(6):
        sample = generate_sample(family, seed, params)
        scenes = sample.metadata()["scenes"]
        pixels = np.asarray(sample.image)
        index_map, objects = object_index_map(scenes)  # at the image's own size
        assert index_map.shape == pixels.shape[:2]
        for k, obj in enumerate(objects, start=1):
            mine = index_map == k
            assert mine.any(), f"{family} seed {seed}: object {k} ({obj['shape'] or obj['kind']}) has no pixel"
            if obj["kind"] != "shape":
                continue
            rgb = np.array(obj["rgb"], dtype=np.uint8)
            assert (pixels[mine] == rgb).all(), f"{family} seed {seed}: a {obj['shape']} pixel is not its colour"
            x0, y0, x1, y1 = obj["box"]
            dx = next(s["offset_x"] for s in scenes if obj in s["objects"])
            in_box = np.zeros_like(mine)
            in_box[y0:y1 + 1, x0 + dx:x1 + dx + 1] = True
            same_colour = (pixels == rgb).all(axis=-1) & in_box & ((index_map == 0) | mine)
            assert (same_colour == (mine & in_box)).all(), f"{family} seed {seed}: {obj['shape']} pixels unlabelled"


def test_patch_shares_centres_style_and_count_of_a_known_scene():
    # one 16 px square centred at (20, 20) on a plain 64 px background: patches of 8 px, an 8 x 8 grid
    square = {"kind": "shape", "shape": "square", "color": "red", "rgb": [220, 40, 40], "size": "large",
              "radius": 8, "x": 20, "y": 20, "box": [12, 12, 28, 28], "text": "", "font_size": 0}
    scene = {"width": 64, "height": 64, "offset_x": 0, "objects": [square],
             "background": {"style": "solid", "color_names": ["white", "white"], "colors": [[245] * 3] * 2,
                            "period": 8, "noise_seed": 0}}
    labels = scene_labels([scene], size=64, patch=8)
    grid = 8
    inside = 2 * grid + 2  # patch (row 2, col 2) spans px 16..23: inside the square (px 12..28)
    assert labels.shape_shares[inside, SHAPE_CLASSES.index("square")] == 1.0
    assert labels.colour_shares[inside, COLOUR_CLASSES.index("red")] == 1.0
    corner = 0
    assert labels.shape_shares[corner, SHAPE_CLASSES.index(BACKGROUND)] == 1.0
    edge = 1 * grid + 1  # px 8..15: the square covers 12..15 of each side, a quarter of the patch
    assert labels.shape_shares[edge, SHAPE_CLASSES.index("square")] == pytest.approx(16 / 64)
    np.testing.assert_allclose(labels.shape_shares.sum(axis=1), 1.0)
    assert labels.centre_shapes[inside] == SHAPE_CLASSES.index("square")
    assert (labels.centre_shapes == NO_CENTRE).sum() == grid * grid - 1
    assert labels.background_style == BACKGROUND_STYLES.index("solid") and labels.shape_count == 1
    assert labels.present_pairs.sum() == 1 and labels.present_pairs[pair_index("square", "red")] == 1


@pytest.mark.parametrize("family", family_names())
def test_present_pairs_are_the_shapes_of_every_panel_by_colour(family):
    params = ProceduralParams(image_size=64)
    for seed in range(4):
        scenes = generate_sample(family, seed, params).metadata()["scenes"]
        labels = scene_labels(scenes, size=64, patch=8)
        expected = {(o["shape"], o["color"]) for s in scenes for o in s["objects"] if o["kind"] == "shape"}
        found = {(shape, colour) for shape in SHAPES for colour in OBJECT_COLORS
                 if labels.present_pairs[pair_index(shape, colour)] == 1}
        assert found == expected, f"{family} seed {seed}"
        assert labels.present_pairs.sum() == len(expected)  # boards and the background are not pairs


def test_labels_refuse_a_patch_that_does_not_divide_the_image_and_a_missing_scene():
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        scene_labels([{"width": 64, "height": 64, "offset_x": 0, "objects": [],
                       "background": {"style": "solid"}}], size=60, patch=8)
    with pytest.raises(ValueError, match="metadata.scenes"):
        object_index_map([], 64)
