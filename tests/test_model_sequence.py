"""Sequence building: vision markers, image and latent blocks, labels, question ends, truncation, padding."""

from __future__ import annotations

import random

import pytest
import torch

from model.sequence import IGNORE_INDEX, SequenceTooLongError
from tests.tiny_models import IMAGE_CONVERSATION, SHORT_IMAGE_CONVERSATION, TEXT_CONVERSATION, make_image


@pytest.fixture
def builder(tiny_model):
    return tiny_model.sequence_builder


def decode(builder, ids):
    return builder.tokenizer.decode(ids)


def test_image_sample_layout_labels_and_question_ends(builder):
    q = 4
    sample = builder.encode(make_image(0), IMAGE_CONVERSATION, latent_count=q)
    ids = sample.input_ids
    vs, ve = builder.vision_start_id, builder.vision_end_id

    # image block, then a latent block before each question, each wrapped in <vision_start>/<vision_end>
    first = sample.image_positions[0]
    assert len(sample.image_positions) == 16 and sample.image_positions == list(range(first, first + 16))
    assert ids[first - 1] == vs and ids[first + 16] == ve
    assert len(sample.latent_starts) == 2
    assert sample.latent_starts[0] == first + 16 + 2  # <ve><vs> between image and latent block
    for start in sample.latent_starts:
        assert ids[start - 1] == vs and ids[start + q] == ve
    assert ids.count(vs) == 3 and ids.count(ve) == 3

    # each question follows its latent block and ends right before the answer
    assert decode(builder, ids[sample.latent_starts[0] + q + 1 : sample.question_ends[0] + 1]).startswith(
        "\nWhat colour is the ball?"
    )
    assert decode(builder, ids[sample.latent_starts[1] + q + 1 :]).startswith("How many cubes are on the table?")
    for question_end, answer in zip(sample.question_ends, ["The ball is red.", "There are three cubes."]):
        assert sample.latent_starts[0] < question_end
        assert decode(builder, ids[question_end + 1 :]).startswith(answer)
        assert decode(builder, ids[: question_end + 1]).endswith("<|im_start|>assistant\n")

    # only the answers and their end-of-turn tokens are supervised
    supervised = [token for token, label in zip(ids, sample.labels) if label != IGNORE_INDEX]
    assert decode(builder, supervised) == "The ball is red.<|im_end|>There are three cubes.<|im_end|>"
    assert all(sample.labels[p] == IGNORE_INDEX for p in sample.image_positions)


def test_text_only_sample_has_no_vision_tokens_or_latents(builder):
    sample = builder.encode(None, TEXT_CONVERSATION, latent_count=4)
    assert builder.vision_start_id not in sample.input_ids and builder.vision_end_id not in sample.input_ids
    assert sample.image_positions == [] and sample.latent_starts == []
    assert sample.pixel_values is None and len(sample.question_ends) == 1
    assert decode(builder, sample.vit_text_ids) == "Count the balloons."  # for the DSM text term only


def test_text_only_vit_text_is_what_the_same_conversation_gives_with_an_image(builder):
    without_placeholder = [{**IMAGE_CONVERSATION[0], "value": "What colour is the ball?"}, *IMAGE_CONVERSATION[1:]]
    with_image = builder.encode(make_image(0), IMAGE_CONVERSATION, latent_count=4)
    text_only = builder.encode(None, without_placeholder, latent_count=4)
    assert text_only.vit_text_ids == with_image.vit_text_ids  # one policy and cap for both kinds of sample
    cap = len(text_only.vit_text_ids)

    batch = builder.collate(
        [(None, without_placeholder), (make_image(1), SHORT_IMAGE_CONVERSATION), (None, TEXT_CONVERSATION)],
        latent_count=4,
    )
    image_batch = builder.collate([(make_image(0), IMAGE_CONVERSATION)], latent_count=4)
    assert batch.vit_text_ids.shape[0] == 1 and batch.text_only_vit_text_ids.shape[0] == 2  # own groups, own padding
    assert torch.equal(batch.text_only_vit_text_ids[0], image_batch.vit_text_ids[0])
    assert torch.equal(batch.text_only_vit_text_mask[0], image_batch.vit_text_mask[0])
    short = builder.encode(None, TEXT_CONVERSATION, latent_count=4).vit_text_ids
    assert batch.text_only_vit_text_ids[1, : len(short)].tolist() == short
    assert batch.text_only_vit_text_mask[1].tolist() == [True] * len(short) + [False] * (cap - len(short))


def test_truncation_keeps_whole_turns_and_their_latent_blocks(builder):
    full = builder.encode(make_image(0), IMAGE_CONVERSATION, latent_count=4)
    cut_inside_second_turn = full.question_ends[1] + 2
    truncated = builder.encode(make_image(0), IMAGE_CONVERSATION, latent_count=4, max_length=cut_inside_second_turn)
    assert len(truncated.latent_starts) == len(truncated.question_ends) == 1
    assert all(q < len(truncated.input_ids) for q in truncated.question_ends)
    supervised = [t for t, label in zip(truncated.input_ids, truncated.labels) if label != IGNORE_INDEX]
    assert decode(builder, supervised) == "The ball is red.<|im_end|>"  # the partial second turn was dropped
    # the ViT text follows the kept turns only
    assert decode(builder, truncated.vit_text_ids) == "What colour is the ball?"

    head_of_first_answer = full.question_ends[0] + 3
    short = builder.encode(make_image(0), IMAGE_CONVERSATION, latent_count=4, max_length=head_of_first_answer)
    assert len(short.input_ids) == head_of_first_answer and len(short.latent_starts) == 1
    assert sum(label != IGNORE_INDEX for label in short.labels) == 2

    with pytest.raises(SequenceTooLongError, match="max_length=20"):
        builder.encode(make_image(0), IMAGE_CONVERSATION, latent_count=4, max_length=20)


def test_vit_text_policy_is_the_same_for_training_and_generation_and_capped_per_turn(builder):
    training = builder.encode(make_image(0), IMAGE_CONVERSATION, latent_count=4)
    prompt = builder.encode(make_image(0), IMAGE_CONVERSATION[:3], latent_count=4, for_generation=True)
    assert training.vit_text_ids == prompt.vit_text_ids  # same human turns -> same ViT text
    cap = builder.config.tune.vit_text_max_tokens

    def ids(text):
        return builder.tokenizer(text, add_special_tokens=False)["input_ids"]

    first, second = ids("What colour is the ball?"), ids("How many cubes are on the table?")
    assert len(first) + len(second) > cap  # together they exceed the per-turn cap; each alone does not
    assert training.vit_text_ids == first + ids("\n") + second

    long_question = "Which shape is larger, the circle or the square? " * 6
    sample = builder.encode(make_image(0), [{"from": "human", "value": f"<image>\n{long_question}"},
                                            {"from": "gpt", "value": "The circle."}], latent_count=4)
    # a long question keeps its start (where it is asked), not its tail
    assert sample.vit_text_ids == ids(long_question.strip())[:cap]
    assert builder.tokenizer.decode(sample.vit_text_ids).startswith("Which shape is larger")


def test_total_vit_text_cap_drops_the_oldest_whole_turns(tiny_checkpoints):
    import dataclasses

    from model.config import get_preset
    from model.fusion import FusionModel

    config = get_preset("fusion-tiny").with_sources(
        language_model=str(tiny_checkpoints["llama"]), vision_tower=str(tiny_checkpoints["siglip"]),
        tokenizer=str(tiny_checkpoints["tokenizer"]))
    config = config.replace(tune=dataclasses.replace(config.tune, vit_text_max_total_tokens=17))
    builder = FusionModel.from_config(config).sequence_builder
    sample = builder.encode(make_image(0), IMAGE_CONVERSATION, latent_count=4)
    second = builder.tokenizer("How many cubes are on the table?", add_special_tokens=False)["input_ids"][:16]
    assert sample.vit_text_ids == second  # both turns do not fit in 17 tokens: only the most recent stays


def test_generation_batch_is_left_padded_with_consistent_positions(builder):
    batch = builder.collate(
        [(make_image(1), SHORT_IMAGE_CONVERSATION[:1]), (None, TEXT_CONVERSATION[:1])], for_generation=True
    )
    assert batch.labels is None and batch.latent_count == builder.config.card.eval_latent_count
    mask = batch.attention_mask
    assert torch.all(mask[:, -1] == 1) and mask[1, 0] == 0  # left padding
    for row in range(2):
        real = mask[row].bool()
        assert torch.equal(batch.position_ids[row][real], torch.arange(int(real.sum())))
    assert batch.has_image.tolist() == [True, False]
    assert batch.latent_rows.tolist() == [0]
    assert batch.question_end_positions.tolist() == [batch.input_ids.shape[1] - 1]  # the last prompt token
    latent_tokens = batch.input_ids[0, batch.latent_positions[0]]
    assert torch.all(latent_tokens == builder.pad_id) and torch.all(mask[0, batch.latent_positions[0]] == 1)


def test_training_latent_count_is_sampled_from_the_set_and_fixed_for_generation(builder):
    rng = random.Random(0)
    counts = {builder.latent_count(for_generation=False, rng=rng) for _ in range(50)}
    assert counts == set(builder.config.card.latent_counts)
    assert {builder.latent_count(for_generation=True) for _ in range(5)} == {builder.config.card.eval_latent_count}
    batch = builder.collate([(make_image(0), IMAGE_CONVERSATION)], rng=random.Random(3))
    assert batch.latent_count in builder.config.card.latent_counts
    assert batch.latent_positions.shape == (2, batch.latent_count)


def test_conversation_errors_name_the_message(builder):
    with pytest.raises(ValueError, match="message 1: expected from='gpt'"):
        builder.encode(None, [TEXT_CONVERSATION[0], TEXT_CONVERSATION[0]], latent_count=4)
    with pytest.raises(ValueError, match="must end with a human turn"):
        builder.encode(None, TEXT_CONVERSATION, latent_count=4, for_generation=True)


PHI_3_STYLE_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def test_explicit_chat_template_and_last_question_policy(tiny_checkpoints):
    """A config template replaces the tokenizer's; system turns pass through; ViT text can be the last question."""
    import dataclasses

    from transformers import AutoTokenizer

    from model.config import get_preset
    from model.sequence import SequenceBuilder, add_vision_tokens

    config = get_preset("fusion-tiny")
    config = config.replace(
        sequence=dataclasses.replace(config.sequence, chat_template=PHI_3_STYLE_TEMPLATE),
        tune=dataclasses.replace(config.tune, vit_text_policy="last_question"),
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoints["tokenizer"])
    tokenizer.add_special_tokens({"extra_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]},
                                 replace_extra_special_tokens=False)
    add_vision_tokens(tokenizer, config.sequence)
    builder = SequenceBuilder(tokenizer, config, native_image_grid=4)
    assert builder.end_of_turn_id == tokenizer.convert_tokens_to_ids("<|end|>")

    conversation = [{"from": "system", "value": "You are a helpful AI assistant."}, *IMAGE_CONVERSATION]
    sample = builder.encode(make_image(0), conversation, latent_count=1)
    text = tokenizer.decode(sample.input_ids)
    assert text.startswith("<|system|>\nYou are a helpful AI assistant.<|end|>\n<|user|>\n<vision_start>")
    supervised = [t for t, label in zip(sample.input_ids, sample.labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "The ball is red.<|end|>There are three cubes.<|end|>"
    for question_end in sample.question_ends:
        assert tokenizer.decode(sample.input_ids[: question_end + 1]).endswith("<|end|>\n<|assistant|>\n")
    assert tokenizer.decode(sample.vit_text_ids) == "How many cubes are on the table?"


def test_latent_count_must_be_a_perfect_square(builder):
    from model.config import ConfigError

    with pytest.raises(ConfigError, match="Q=5 is not a perfect square"):
        builder.collate([(make_image(0), IMAGE_CONVERSATION)], latent_count=5)
