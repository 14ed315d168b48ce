"""Multiple-choice answer forms: the data's letter, or the option's text then its letter, the same in training
(the loader) and in evaluation (the earlier turns of a prompt)."""

from __future__ import annotations

import json

from model.sequence import supervised_runs
from tests.train.conftest import write_sizes, write_tar
from tests.train.test_loader import builder  # noqa: F401 (fixture)
from train.choices import LETTER, OPTION_AND_LETTER, with_answer_form
from train.config import DataSection
from train.evaluate import held_out_items
from train.loader import ShardLoader
from train.scoring import MULTIPLE_CHOICE
from train.sources import SourceSpec, resolve_sources

INSTRUCTION = "Answer with the option's letter from the given choices directly."
CONVERSATION = [
    {"from": "human", "value": f"<image>\nHow many stars are there?\nA. 3\nB. 7\nC. 1\nD. 2\n{INSTRUCTION}"},
    {"from": "gpt", "value": "B"},
    {"from": "human", "value": "What colour is the star?\nAnswer the question using a single word or phrase."},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": f"Is there a cube?\nA. Yes\nB. No\n{INSTRUCTION}"},
    {"from": "gpt", "value": "B"},
]


def test_the_option_form_rewrites_only_the_answers_of_lettered_questions():
    rewritten = with_answer_form(CONVERSATION, OPTION_AND_LETTER)
    assert [turn["value"] for turn in rewritten[1::2]] == ["7: B", "red", "No: B"]
    assert [turn["value"] for turn in rewritten[::2]] == [turn["value"] for turn in CONVERSATION[::2]]
    assert with_answer_form(CONVERSATION, LETTER) == CONVERSATION
    odd = [CONVERSATION[0], {"from": "gpt", "value": "E"}]  # a letter no option has is left for the data to show
    assert with_answer_form(odd, OPTION_AND_LETTER) == odd


def test_the_loader_trains_the_option_form_on_the_answer_tokens(builder, tmp_path):  # noqa: F811
    from pipeline.record import SampleRecord
    from tests.train.conftest import image_bytes

    record = SampleRecord(key="mc_00000", category="Cat", split="train", seed=0, caption="c",
                          conversations=CONVERSATION)
    sample = {"__key__": "mc_00000", "json": json.dumps(record.to_json_dict()).encode(), "jpg": image_bytes(0)}
    tar = write_tar(tmp_path / "s" / "mc-00000.tar", [sample])
    write_sizes(tmp_path / "s", [tar], [1])
    tokenizer = builder.tokenizer
    answers = {}
    for form in (LETTER, OPTION_AND_LETTER):
        sources = resolve_sources([SourceSpec(path=str(tmp_path / "s" / "*.tar"))], 0)
        data = DataSection(shuffle_buffer=1, shuffle_initial=1, num_workers=0, multiple_choice_answer=form)
        loader = ShardLoader(sources, builder, data, seed=0, micro_batch=1, batches_per_epoch=1, max_length=512,
                             rank=0, world_size=1)
        batch = next(iter(loader.epoch(0))).batch
        runs = supervised_runs(batch.input_ids[0].tolist(), batch.labels[0].tolist())
        answers[form] = [tokenizer.decode(run, skip_special_tokens=True).strip() for run in runs]
    assert answers[LETTER] == ["B", "red", "B"]
    assert answers[OPTION_AND_LETTER] == ["7: B", "red", "No: B"]


def test_evaluation_writes_earlier_answers_in_the_trained_form_and_keeps_the_letter_as_reference(small_dataset):
    letter_items = held_out_items(str(small_dataset), "test", None)
    option_items = held_out_items(str(small_dataset), "test", None, OPTION_AND_LETTER)
    assert [(i.key, i.turn, i.reference) for i in letter_items] == [(i.key, i.turn, i.reference) for i in option_items]
    later = [(a, b) for a, b in zip(letter_items, option_items, strict=True)
             if any(i.kind == MULTIPLE_CHOICE and i.key == a.key and i.turn < a.turn for i in letter_items)]
    assert later, "the test data has no question after a multiple-choice turn"
    for letter_item, option_item in later:
        assert option_item.prompt == with_answer_form(letter_item.prompt, OPTION_AND_LETTER)
        assert option_item.prompt != letter_item.prompt
