"""DSM: hand-computed values, the text term over image and text-only questions, and the image term over images only."""

from __future__ import annotations

import math

import torch
from torch.utils.hooks import RemovableHandle

from model.dsm import Reconstruction, dual_semantic_mapping_loss
from tests.tiny_models import IMAGE_CONVERSATION, SHORT_IMAGE_CONVERSATION, TEXT_CONVERSATION, make_image

OTHER_TEXT_CONVERSATION = [
    {"from": "human", "value": "Which shape is larger, the circle or the square?"},
    {"from": "gpt", "value": "The circle is larger."},
]

NUM_PATCHES = 16  # tiny SigLIP: 32 px, patch 8


def record_vit_passes(model) -> tuple[list[tuple[int, int]], RemovableHandle]:
    """(rows, sequence length) of every pass through the ViT blocks, from a hook on the first block."""
    passes: list[tuple[int, int]] = []
    handle = model.vision.tower.encoder.layers[0].register_forward_pre_hook(
        lambda module, args: passes.append(tuple(args[0].shape[:2]))
    )
    return passes, handle


def test_dsm_equals_hand_computation_on_fixed_tensors():
    # image samples' questions: the third token is padding (cos = -1 would add 2)
    image_questions = Reconstruction(
        target=torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]),
        rebuilt=torch.tensor([[[2.0, 0.0], [1.0, 0.0], [-1.0, -1.0]]]),
        mask=torch.tensor([[True, True, False]]),
    )
    # text-only samples' questions, padded to their own width
    text_only_questions = Reconstruction(
        target=torch.tensor([[[1.0, 0.0]]]), rebuilt=torch.tensor([[[-3.0, 0.0]]]), mask=torch.tensor([[True]])
    )
    patches = Reconstruction(
        target=torch.tensor([[[3.0, 0.0], [0.0, 2.0]]]), rebuilt=torch.tensor([[[0.0, 5.0], [0.0, -1.0]]])
    )
    cpu = torch.device("cpu")

    terms = dual_semantic_mapping_loss([image_questions, text_only_questions], [patches], device=cpu)
    # text: token mean of (1 - 1, 1 - 0, 1 - (-1)) = 1.0 (a mean of the two parts' means would be 1.25)
    # image: mean(1 - 0, 1 - (-1)) = 1.5
    assert math.isclose(terms.text.item(), 1.0, abs_tol=1e-6)
    assert math.isclose(terms.image.item(), 1.5, abs_tol=1e-6)
    assert math.isclose(terms.total.item(), 2.5, abs_tol=1e-6)

    text_only_batch = dual_semantic_mapping_loss([text_only_questions], [], device=cpu)
    assert math.isclose(text_only_batch.text.item(), 2.0, abs_tol=1e-6) and text_only_batch.image.item() == 0.0

    all_padding = Reconstruction(image_questions.target, image_questions.rebuilt, torch.zeros(1, 3, dtype=torch.bool))
    nothing = dual_semantic_mapping_loss([all_padding], [], device=cpu)
    assert nothing.text.item() == 0.0 and nothing.image.item() == 0.0


def test_mixed_batch_text_term_is_token_weighted_over_image_and_text_only_questions(tiny_model):
    builder = tiny_model.sequence_builder
    text_samples = [(None, TEXT_CONVERSATION), (None, OTHER_TEXT_CONVERSATION)]
    image_samples = [(make_image(0), IMAGE_CONVERSATION), (make_image(1), SHORT_IMAGE_CONVERSATION)]
    mixed = builder.collate([text_samples[0], image_samples[0], text_samples[1], image_samples[1]], latent_count=4)
    image_only = builder.collate(image_samples, latent_count=4)
    text_only = builder.collate(text_samples, latent_count=4)

    passes, handle = record_vit_passes(tiny_model)
    try:
        mixed_output = tiny_model(mixed)
    finally:
        handle.remove()
    image_output, text_output = tiny_model(image_only), tiny_model(text_only)

    question_lengths = mixed.text_only_vit_text_mask.sum(dim=1).tolist()
    assert question_lengths[0] != question_lengths[1]  # padding of the text-only pass is part of the check
    # text-guided full views, tiles, then ONE batched pass of the text-only questions alone (no patch tokens)
    assert passes == [(2, NUM_PATCHES + mixed.vit_text_ids.shape[1]), (8, NUM_PATCHES), (2, max(question_lengths))]

    image_tokens = image_only.vit_text_mask.sum()
    text_tokens = text_only.text_only_vit_text_mask.sum()
    expected_text = (image_tokens * image_output.dsm_text + text_tokens * text_output.dsm_text) / (
        image_tokens + text_tokens
    )
    assert torch.allclose(mixed_output.dsm_text, expected_text, atol=1e-6)
    assert not torch.allclose(mixed_output.dsm_text, image_output.dsm_text, atol=1e-4)  # text-only rows count
    assert torch.allclose(mixed_output.dsm_image, image_output.dsm_image, atol=1e-6)  # images only, no blanks
    expected_loss = mixed_output.lm_loss + 0.1 * (mixed_output.dsm_text + mixed_output.dsm_image)
    assert torch.allclose(mixed_output.loss, expected_loss)


def test_text_only_batch_has_a_text_term_and_no_image_term(tiny_model):
    builder = tiny_model.sequence_builder
    batch = builder.collate([(None, TEXT_CONVERSATION), (None, OTHER_TEXT_CONVERSATION)], latent_count=4)
    output = tiny_model(batch)
    assert batch.num_images == 0 and batch.latent_positions.shape[0] == 0  # still no images or latents in the LLM
    assert output.dsm_text.item() > 0 and output.dsm_image.item() == 0.0
    assert torch.allclose(output.loss, output.lm_loss + 0.1 * output.dsm_text)

    # Each row alone (no padding) gives the same token-weighted term: padding is masked, not averaged in.
    singles = [builder.collate([sample], latent_count=4) for sample in [(None, TEXT_CONVERSATION),
                                                                       (None, OTHER_TEXT_CONVERSATION)]]
    tokens = torch.stack([single.text_only_vit_text_mask.sum() for single in singles])
    terms = torch.stack([tiny_model(single).dsm_text for single in singles])
    assert torch.allclose(output.dsm_text, (tokens * terms).sum() / tokens.sum(), atol=1e-6)


def test_text_only_dsm_trains_the_aux_projector_and_the_vit(tiny_model):
    batch = tiny_model.sequence_builder.collate([(None, TEXT_CONVERSATION)], latent_count=4)
    tiny_model(batch).loss.backward()
    # The language-model path of a text-only batch never touches these, so their gradients come from DSM alone.
    trained = {"aux_projector": tiny_model.aux_projector, "vit_blocks": tiny_model.vision.tower.encoder.layers,
               "mm_projector": tiny_model.mm_projector}
    for name, module in trained.items():
        for parameter_name, parameter in module.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"{name}.{parameter_name}"
    assert tiny_model.vision.tower.embeddings.patch_embedding.weight.grad is None  # no image was encoded


def test_text_only_rows_get_no_vit_pass_without_dsm(tiny_model):
    builder = tiny_model.sequence_builder
    samples = [(make_image(0), IMAGE_CONVERSATION[:1]), (None, TEXT_CONVERSATION[:1])]
    prompt = builder.collate(samples, for_generation=True)
    assert prompt.text_only_vit_text_mask.any()  # the text is there; only DSM reads it
    image_passes = [(1, NUM_PATCHES + prompt.vit_text_ids.shape[1]), (4, NUM_PATCHES)]

    passes, handle = record_vit_passes(tiny_model)
    try:
        tiny_model.eval()
        tiny_model.generate_ids(prompt, max_new_tokens=2)
        assert passes == image_passes
        passes.clear()
        tiny_model.train()
        tiny_model.config = tiny_model.config.replace(dsm_weight=0.0)
        training = builder.collate([(make_image(0), IMAGE_CONVERSATION), (None, TEXT_CONVERSATION)], latent_count=4)
        output = tiny_model(training)
        assert output.dsm_text is None and output.dsm_image is None
        assert passes == [(1, NUM_PATCHES + training.vit_text_ids.shape[1]), (4, NUM_PATCHES)]
    finally:
        handle.remove()
