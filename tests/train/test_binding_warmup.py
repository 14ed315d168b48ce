"""The option-binding warm-up: it reads the data's multiple-choice turns, tells the answer with the options
shuffled, trains the language model alone, and fails clearly on data without multiple choice."""

from __future__ import annotations

import json
import random
import string
from collections import Counter

import pytest

from tests.train.conftest import plain_shards
from tests.train.test_vision_warmup import changed_parts, tiny_model_and_sources
from train.binding_warmup import (
    RESULT_FILE,
    BindingWarmupError,
    choice_questions,
    told_conversation,
    warm_up_binding,
)
from train.choices import OPTION_AND_LETTER, ChoiceQuestion, choice_question, parse_options
from train.config import BindingWarmupConfig

INSTRUCTION = "Answer with the option's letter from the given choices directly."


def test_a_multiple_choice_turn_is_read_and_other_turns_are_not():
    question = f"<image>\nWhat colour is the star?\nA. dark grey\nB. red\nC. blue\n{INSTRUCTION}"
    assert choice_question(question, "B") == ChoiceQuestion(
        before=("What colour is the star?",), options=("dark grey", "red", "blue"), after=(INSTRUCTION,), answer=1)
    assert choice_question(question, "B.") is not None  # a letter with its full stop
    assert choice_question(question, "D") is None  # no option D
    assert choice_question(question, "red") is None  # the answer is not a letter
    assert choice_question("What colour is the star?", "red") is None  # no options
    assert choice_question("Pick one.\nA. red\nSome text\nB. blue", "A") is None  # options split by a line
    assert choice_question("Pick one.\nB. red\nA. blue", "A") is None  # not lettered A, B, ... in order


def test_a_told_conversation_shuffles_the_options_and_asks_for_the_told_ones_letter():
    question = choice_question(f"What colour is the star?\nA. red\nB. blue\nC. green\nD. pink\n{INSTRUCTION}", "C")
    rng = random.Random(0)
    letters = Counter()
    orders = set()
    for _ in range(200):
        human, gpt = told_conversation(question, rng)
        text = human["value"]
        options = parse_options(text)
        assert text.startswith("The answer is green.\nWhat colour is the star?\n") and text.endswith(INSTRUCTION)
        assert sorted(options) == sorted(question.options)
        assert options[string.ascii_uppercase.index(gpt["value"])] == "green"
        letters[gpt["value"]] += 1
        orders.add(tuple(options))
    assert set(letters) == set("ABCD") and min(letters.values()) > 30  # the told letter is spread over all four
    assert len(orders) > 12


def test_in_the_option_and_letter_form_the_answer_names_the_option_then_its_new_letter():
    question = choice_question(f"What colour is the star?\nA. red\nB. blue\nC. green\nD. pink\n{INSTRUCTION}", "C")
    rng = random.Random(0)
    for _ in range(20):
        human, gpt = told_conversation(question, rng, OPTION_AND_LETTER)
        letter = string.ascii_uppercase[parse_options(human["value"]).index("green")]
        assert gpt["value"] == f"green: {letter}"  # the answer's text tells the option: nothing is told before
        assert human["value"].startswith("What colour is the star?\n")


def test_a_told_share_of_option_form_conversations_is_told_the_answer_first():
    question = choice_question(f"What colour is the star?\nA. red\nB. blue\nC. green\nD. pink\n{INSTRUCTION}", "C")
    for share, low, high in ((0.0, 0, 0), (0.5, 160, 240), (1.0, 400, 400)):
        rng = random.Random(0)
        told = 0
        for _ in range(400):
            human, gpt = told_conversation(question, rng, OPTION_AND_LETTER, told_share=share)
            letter = string.ascii_uppercase[parse_options(human["value"]).index("green")]
            assert gpt["value"] == f"green: {letter}"  # told or not, the answer names the option, then its letter
            is_told = human["value"].startswith("The answer is green.\nWhat colour is the star?\n")
            assert is_told or human["value"].startswith("What colour is the star?\n")
            told += is_told
        assert low <= told <= high, (share, told)


def test_the_warm_up_trains_the_language_model_alone_on_the_datas_multiple_choice(small_dataset, tmp_path):
    model, sources = tiny_model_and_sources(small_dataset, tmp_path)
    questions, skipped = choice_questions(sources, max_questions=10_000)
    assert len(questions) >= 20 and not skipped  # SynthMultiChoice asks several per image, other families too
    before = {k: v.clone() for k, v in model.state_dict().items()}

    result = warm_up_binding(model, sources, BindingWarmupConfig(steps=80, batch_size=16, lr=1e-3), seed=0,
                             out=tmp_path, progress=False)

    assert result["last_loss"] < 0.5 * result["first_loss"]  # the letter format is learned at least
    assert result["held_out"] == len(questions) // 5 and result["questions"] == len(questions) - result["held_out"]
    accuracy = result["held_out_accuracy"]
    assert 0.25 <= accuracy["chance"] <= 0.5 and accuracy["after"] > accuracy["before"]  # 0% -> 53% measured
    assert json.loads((tmp_path / RESULT_FILE).read_text()) == result
    assert {part.split(".")[0] for part in changed_parts(before, model)} == {"language_model"}
    assert all(p.grad is None for p in model.parameters())  # no gradient left behind for the training


def test_data_without_multiple_choice_is_a_clear_error(tmp_path):
    model, sources = tiny_model_and_sources(plain_shards(tmp_path / "plain"), tmp_path)
    with pytest.raises(BindingWarmupError, match=r"have 0 distinct multiple-choice turns.*binding_warmup\.steps: 0"):
        warm_up_binding(model, sources, BindingWarmupConfig(steps=2), seed=0, progress=False)


def test_a_frozen_language_model_is_a_clear_error(small_dataset, tmp_path):
    model, sources = tiny_model_and_sources(small_dataset, tmp_path)
    model.set_trainable({"language_model": False})
    with pytest.raises(BindingWarmupError, match="language model is frozen"):
        warm_up_binding(model, sources, BindingWarmupConfig(steps=2), seed=0, progress=False)
