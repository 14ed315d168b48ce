import pytest

from pipeline.record import MULTIPLE_CHOICE_INSTRUCTION, SHORT_ANSWER_INSTRUCTION, SampleRecord
from tests.stage_helpers import run_stages


def record(conversations, caption="A red circle.", description="A red circle on a grey background."):
    return SampleRecord(key="k_0", category="SynthConvShort", split="train", seed=1, caption=caption,
                        description=description, conversations=conversations)


def run_rules(rec, **params):
    run_stages([{"name": "rules", "params": params}], [rec])
    return rec


def turns(*values):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


MC_QUESTION = f"<image>\nWhat colour is the circle?\nA. red\nB. blue\nC. green\nD. pink\n{MULTIPLE_CHOICE_INSTRUCTION}"


def test_good_record_passes_and_keeps_scores():
    rec = run_rules(record(turns(MC_QUESTION, "A", f"What shape is red?\n{SHORT_ANSWER_INSTRUCTION}", "circle")))
    assert not rec.is_rejected
    assert rec.scores == {"rules/caption_words": 3.0, "rules/description_words": 7.0, "rules/qa_turns": 2.0}


@pytest.mark.parametrize(
    ("conversations", "params", "reason"),
    [
        (turns(MC_QUESTION, "E"), {}, "answer_not_in_options"),
        (turns(MC_QUESTION, "red"), {}, "answer_not_in_options"),
        (turns(f"<image>\nWhat colour?\n{SHORT_ANSWER_INSTRUCTION}", "a very long answer here"), {}, "short_answer_too_long"),
        (turns("What colour?", "red"), {}, "image_token"),
        (turns("<image>What colour?", "red"), {}, "image_token"),
        (turns("<image>\nWhat?", "red", "<image>\nAgain?", "blue"), {}, "image_token"),
        (turns("<image>\nWhat?"), {}, "bad_turn_count"),
        ([{"from": "gpt", "value": "<image>\nx"}, {"from": "human", "value": "y"}], {}, "bad_turn"),
        (turns("<image>\nWhat?", "  "), {}, "empty_turn"),
        (turns("<image>\nQ1", "a", "Q2", "b", "Q3", "c"), {"max_qa_turns": 2}, "too_many_turns"),
    ],
)
def test_broken_records_are_rejected_with_the_rule_that_failed(conversations, params, reason):
    rec = run_rules(record(conversations), **params)
    assert rec.is_rejected
    assert rec.reject_stage == "rules"
    assert rec.reject_reason.startswith(reason), rec.reject_reason


def test_length_limits():
    long_caption = record(turns("<image>\nDescribe.", "ok"), caption=" ".join(["word"] * 13))
    assert run_rules(long_caption).reject_reason.startswith("caption_too_long: 13 words > 12")
    short_description = record(turns("<image>\nDescribe.", "ok"), description="too short")
    assert run_rules(short_description, min_description_words=5).reject_reason.startswith("description_length")


def test_already_rejected_records_are_not_rescored():
    rec = record(turns("<image>\nDescribe.", "ok"))
    rec.reject("earlier", "bad_image: blank")
    run_rules(rec)
    assert rec.reject_stage == "earlier" and rec.scores == {}
