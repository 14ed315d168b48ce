"""Label masks per chat-template family (Llama-3, Phi-3 with a SentencePiece tokenizer, Qwen2/ChatML), built offline:
only assistant tokens are supervised, any mismatch fails loudly, and a fully masked batch is an error."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoTokenizer

from model.config import get_preset
from model.loss import AllLabelsMaskedError
from model.sequence import IGNORE_INDEX, LabelMaskError, SequenceBuilder, add_vision_tokens, supervised_runs
from tests.tiny_models import (
    IMAGE_CONVERSATION,
    build_llama3_tokenizer,
    build_phi3_tokenizer,
    build_tokenizer,
    make_image,
)

SYSTEM = {"from": "system", "value": "You are a helpful assistant."}


@pytest.fixture(scope="module")
def family_tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("templates")
    build_tokenizer(root / "chatml")
    build_llama3_tokenizer(root / "llama3")
    build_phi3_tokenizer(root / "phi3")
    return {"qwen2-chatml": root / "chatml", "llama-3": root / "llama3", "phi-3": root / "phi3" / "tokenizer"}


def builder_for(directory, chat_template=None):
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = get_preset("fusion-tiny")
    if chat_template is not None:
        config = config.replace(sequence=dataclasses.replace(config.sequence, chat_template=chat_template))
    add_vision_tokens(tokenizer, config.sequence)
    return SequenceBuilder(tokenizer, config, native_image_grid=4)


EXPECTED = {
    "qwen2-chatml": ("<|im_end|>", "<|im_start|>assistant\n", "<|im_start|>user\n<vision_start>"),
    "llama-3": ("<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n",
                "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"),
    "phi-3": ("<|end|>", "<|assistant|>\n", "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\n"),
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_only_assistant_tokens_are_supervised(family_tokenizers, family):
    end, assistant_header, start = EXPECTED[family]
    builder = builder_for(family_tokenizers[family])
    tokenizer = builder.tokenizer
    assert tokenizer.convert_ids_to_tokens(builder.end_of_turn_id) == end
    builder.verify_label_masks()  # the trainer's startup check passes for every family

    conversation = [SYSTEM, *IMAGE_CONVERSATION] if family != "qwen2-chatml" else IMAGE_CONVERSATION
    sample = builder.encode(make_image(0), conversation, latent_count=4)
    text = tokenizer.decode(sample.input_ids)
    assert text.startswith(start)
    runs = [tokenizer.decode(run).strip() for run in supervised_runs(sample.input_ids, sample.labels)]
    assert runs == [f"The ball is red.{end}", f"There are three cubes.{end}"]
    for question_end in sample.question_ends:  # the token before each answer ends the assistant header
        assert tokenizer.decode(sample.input_ids[: question_end + 1]).endswith(assistant_header)
    unsupervised = [t for t, label in zip(sample.input_ids, sample.labels) if label == IGNORE_INDEX]
    assert "colour" in tokenizer.decode(unsupervised) and "red" not in tokenizer.decode(unsupervised)
    assert all(sample.labels[p] == IGNORE_INDEX for p in sample.image_positions)


def test_llama_3_1_stop_set_has_eom_and_end_of_text(family_tokenizers):
    builder = builder_for(family_tokenizers["llama-3"])
    stops = set(builder.tokenizer.convert_ids_to_tokens(builder.stop_token_ids()))
    assert {"<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"} <= stops


BROKEN_TEMPLATE = (  # drops what the assistant said: every label would be masked
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '<|im_start|>user\n' + message['content'] + '<|im_end|>\n<|im_start|>assistant\n' }}"
    "{% else %}{{ '<|im_end|>\n' }}{% endif %}{% endfor %}"
)
SHIFTED_TEMPLATE = (  # puts the answer inside the user turn: labels would land on the wrong tokens
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_end|>' + message['content'] }}"
    "{% else %}{{ message['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
)


@pytest.mark.parametrize("template", [BROKEN_TEMPLATE, SHIFTED_TEMPLATE], ids=["drops-answers", "shifts-answers"])
def test_a_template_tokenizer_mismatch_fails_loudly(family_tokenizers, template):
    with pytest.raises(LabelMaskError, match="disagree|does not render the assistant"):
        builder_for(family_tokenizers["qwen2-chatml"], chat_template=template).verify_label_masks()


def test_a_batch_whose_labels_are_all_masked_is_an_error(tiny_model):
    batch = tiny_model.sequence_builder.collate([(make_image(0), IMAGE_CONVERSATION)], latent_count=4)
    masked = dataclasses.replace(batch, labels=torch.full_like(batch.labels, IGNORE_INDEX))
    with pytest.raises(AllLabelsMaskedError, match="every label"):
        tiny_model(masked)
    with pytest.raises(AllLabelsMaskedError, match="every label"):
        tiny_model(masked, loss_chunk_tokens=8)
    assert torch.isfinite(tiny_model(batch).loss)  # the same batch with its labels trains


def test_chunked_cross_entropy_equals_the_full_one(tiny_model):
    batch = tiny_model.sequence_builder.collate([(make_image(0), IMAGE_CONVERSATION), (None, IMAGE_CONVERSATION[2:])],
                                                latent_count=4)
    torch.manual_seed(0)
    full = tiny_model(batch)
    full.loss.backward()
    full_grads = {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}
    tiny_model.zero_grad()
    chunked = tiny_model(batch, loss_chunk_tokens=3)
    chunked.loss.backward()
    assert chunked.logits is None  # no full-vocabulary logits were returned
    assert torch.allclose(full.lm_loss_sum, chunked.lm_loss_sum, atol=1e-5)
    assert int(full.num_supervised) == int(chunked.num_supervised) > 3  # really more than one chunk
    for name, grad in full_grads.items():
        assert torch.allclose(grad, tiny_model.get_parameter(name).grad, atol=1e-6), name


def test_a_tokenizer_fitted_to_the_data_writes_each_chat_role_as_one_token(small_dataset, tmp_path):
    from train.config import SourceSpec
    from train.sources import resolve_sources
    from train.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(resolve_sources([SourceSpec(path=str(small_dataset))], 0), tmp_path, 400, 100)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What colour is the star?"},
                                          {"role": "assistant", "content": "red"}], tokenize=False)
    pieces = [tokenizer.decode([i]) for i in tokenizer(text)["input_ids"]]
    assert pieces.count("user") == 1 and pieces.count("assistant") == 1  # not spelled out letter by letter


def test_a_fitted_tokenizer_writes_an_answer_and_the_same_option_text_with_the_same_tokens(small_dataset, tmp_path):
    from train.config import SourceSpec
    from train.sources import resolve_sources
    from train.choices import option_and_letter
    from train.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(resolve_sources([SourceSpec(path=str(small_dataset))], 0), tmp_path, 400, 100)
    question = "What colour is the star?\nA. dark grey\nB. 12\nC. red\nAnswer with the option's letter."
    ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    for answer in ("dark grey", "12", "red", "A", "C"):
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        assert any(ids[i:i + len(answer_ids)] == answer_ids for i in range(len(ids))), answer
        # and so does the option form of the answer ("red: C", train/choices.py) before its letter
        named_ids = tokenizer(option_and_letter(answer, "C"), add_special_tokens=False)["input_ids"]
        assert named_ids[:len(answer_ids)] == answer_ids, answer
    assert tokenizer.decode(ids) == question  # spaces and line breaks come back exactly


def test_the_tokenizer_is_fitted_to_the_text_each_source_trains_on(small_dataset):
    from train.config import SourceSpec
    from train.sources import resolve_sources
    from train.tokenizer import conversation_texts

    def texts(**spec):
        return list(conversation_texts(resolve_sources([SourceSpec(path=str(small_dataset), **spec)], 0), 20))

    turns = texts()
    passages = texts(text_only=True, context="description")
    described = texts(describe="description")
    assert len(described) == 20 and not set(described) & set(turns)  # the descriptions, not the turns
    assert set(described) <= set(passages) and set(turns) <= set(passages)  # a context source reads both
