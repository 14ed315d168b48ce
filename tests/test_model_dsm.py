"""DSM: hand-computed values, masking, and text-only samples that never contribute an image term."""

from __future__ import annotations

import math

import torch

from model.dsm import dual_semantic_mapping_loss
from tests.tiny_models import IMAGE_CONVERSATION, TEXT_CONVERSATION, make_image


def test_dsm_equals_hand_computation_on_fixed_tensors():
    question = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    rebuilt_question = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [-1.0, -1.0]]])
    question_mask = torch.tensor([[True, True, False]])  # third token is padding (cos = -1 would add 2)
    patches = torch.tensor([[[3.0, 0.0], [0.0, 2.0]], [[1.0, 0.0], [1.0, 0.0]]])
    rebuilt_patches = torch.tensor([[[0.0, 5.0], [0.0, -1.0]], [[-1.0, 0.0], [-1.0, 0.0]]])
    image_present = torch.tensor([True, False])  # second sample has no image: its (distance 2) term is skipped

    terms = dual_semantic_mapping_loss(question, rebuilt_question, question_mask, patches, rebuilt_patches,
                                       image_present)
    # text: mean(1 - 1, 1 - 0) = 0.5; image: mean(1 - 0, 1 - (-1)) = 1.5
    assert math.isclose(terms.text.item(), 0.5, abs_tol=1e-6)
    assert math.isclose(terms.image.item(), 1.5, abs_tol=1e-6)
    assert math.isclose(terms.total.item(), 2.0, abs_tol=1e-6)

    nothing = dual_semantic_mapping_loss(question, rebuilt_question, torch.zeros_like(question_mask), patches,
                                         rebuilt_patches, torch.zeros(2, dtype=torch.bool))
    assert nothing.text.item() == 0.0 and nothing.image.item() == 0.0


def test_mixed_batch_runs_and_text_only_samples_add_no_image_term(tiny_model):
    builder = tiny_model.sequence_builder
    encoded_views: list[int] = []
    hook = tiny_model.vision.register_forward_pre_hook(lambda m, args: encoded_views.append(args[0].shape[0]))
    try:
        mixed = builder.collate([(None, TEXT_CONVERSATION), (make_image(5), IMAGE_CONVERSATION)], latent_count=4)
        mixed_output = tiny_model(mixed)
        image_only = builder.collate([(make_image(5), IMAGE_CONVERSATION)], latent_count=4)
        image_output = tiny_model(image_only)
    finally:
        hook.remove()

    assert mixed.has_image.tolist() == [False, True] and mixed.num_images == 1
    # one full view (text-guided) and 4 tiles per forward: the text-only sample is never encoded as a blank image
    assert encoded_views == [1, 4, 1, 4]
    assert torch.isfinite(mixed_output.loss) and mixed_output.dsm_image is not None
    assert torch.allclose(mixed_output.dsm_image, image_output.dsm_image, atol=1e-6)
    assert torch.allclose(mixed_output.dsm_text, image_output.dsm_text, atol=1e-6)
    expected = mixed_output.lm_loss + 0.1 * (mixed_output.dsm_text + mixed_output.dsm_image)
    assert torch.allclose(mixed_output.loss, expected)


def test_text_only_batch_has_no_dsm_and_plain_language_loss(tiny_model):
    batch = tiny_model.sequence_builder.collate([(None, TEXT_CONVERSATION)], latent_count=4)
    output = tiny_model(batch)
    assert output.dsm_text is None and output.dsm_image is None
    assert torch.equal(output.loss, output.lm_loss) and torch.isfinite(output.loss)
