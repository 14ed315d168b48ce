"""The diffusers backend on the tiny Stable Diffusion pipeline: one generator seed per image."""

import numpy as np

from generators.diffusion.composite import composite_side_by_side


def test_the_same_seed_gives_the_same_image_whatever_its_batch(tiny_diffusion):
    alone = tiny_diffusion.render([{"prompt": "a red ball on a table", "seed": 11}])[0]
    batch = tiny_diffusion.render([{"prompt": "three green cubes", "seed": 3},
                                   {"prompt": "a red ball on a table", "seed": 11},
                                   {"prompt": "a red ball on a table", "seed": 12}])
    assert alone.shape == (32, 32, 3) and alone.dtype == np.uint8
    assert np.array_equal(batch[1], alone)
    assert not np.array_equal(batch[2], alone)  # another seed, another image
    assert not np.array_equal(batch[0], alone)


def test_contrast_panels_composite_side_by_side(tiny_diffusion):
    left, right = tiny_diffusion.render([{"prompt": "a black cat", "seed": 1}, {"prompt": "a white cat", "seed": 2}])
    pair = composite_side_by_side(left, right)
    assert pair.shape[0] == 32 and pair.shape[1] > 64 and pair.dtype == np.uint8
    assert np.array_equal(pair[:, :32], left) and np.array_equal(pair[:, -32:], right)


def test_identity_names_the_pipeline_and_a_content_revision(tiny_synthesis_models):
    from generators.diffusion.diffusers_backend import DiffusersBackend

    identity = DiffusersBackend.identity(DiffusersBackend.Params(path=str(tiny_synthesis_models["diffusion"])))
    assert identity["pipeline_class"] == "AutoPipelineForText2Image" and identity["revision"]
