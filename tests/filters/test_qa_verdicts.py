"""A failed QA drops that QA: the sample survives with the rest intact if enough pass, and every verdict is
recorded per QA in a metadata shape that never varies."""

import json

import pytest

from filters.qa_verdicts import QAVerdict, apply_qa_verdicts
from generators.procedural import ProceduralParams, generate_sample
from pipeline.record import MULTIPLE_CHOICE_INSTRUCTION, SampleRecord
from tests.stage_helpers import run_stages, unit_for


def multiple_choice(seed=3):
    sample = generate_sample("SynthMultiChoice", seed, ProceduralParams())
    return SampleRecord(key=f"synthmultichoice_train_{seed:07d}", category="SynthMultiChoice", split="train",
                        seed=seed, caption=sample.caption, description=sample.description,
                        conversations=[dict(t) for t in sample.conversations], metadata=sample.metadata())


def test_a_qa_dropped_by_a_rule_leaves_the_rest_of_the_sample_intact():
    rec = multiple_choice()
    original = [dict(t) for t in rec.conversations]
    original_qa = list(rec.metadata["qa"])
    assert len(original) >= 6
    rec.conversations[0]["value"] = rec.conversations[0]["value"].replace("\nB. ", "\nE. ")  # breaks QA 0's options
    rec.conversations[3]["value"] = "Z"  # QA 1 answers a letter that is no option
    run_stages([{"name": "qa_rules"}], [rec])

    assert not rec.is_rejected
    assert rec.conversations == [
        {"from": "human", "value": "<image>\n" + original[4]["value"]}, *original[5:]]  # the image token moved
    assert rec.metadata["qa"] == original_qa[2:]  # the generator's truth stays aligned with the pairs
    assert rec.metadata["qa_origin"] == list(range(2, len(original) // 2))
    dropped = rec.metadata["qa_dropped"]
    assert [(d["qa"], d["stage"]) for d in dropped] == [(0, "qa_rules"), (1, "qa_rules")]
    assert dropped[0]["reason"].startswith("option_letters") and dropped[1]["reason"].startswith("answer_not_in_options")
    assert dropped[1]["answer"] == "Z" and MULTIPLE_CHOICE_INSTRUCTION in dropped[1]["question"]
    verdicts = rec.metadata["qa_verdicts"]
    assert [v["verdict"] for v in verdicts] == ["fail", "fail"] + ["pass"] * (len(original) // 2 - 2)
    assert rec.scores["qa_rules/qa_failed"] == 2.0
    # The rule stages of the sample level agree with what is left.
    run_stages([{"name": "rules"}], [rec])
    assert not rec.is_rejected


def test_indices_stay_those_of_the_generated_conversation_across_two_verifiers():
    rec = multiple_choice()
    pairs = len(rec.conversations) // 2
    apply_qa_verdicts(rec, "first", [QAVerdict(i, i != 1, "bad" if i == 1 else "") for i in range(pairs)], 1)
    apply_qa_verdicts(rec, "second", [QAVerdict(i, i != 0, "worse" if i == 0 else "") for i in range(pairs - 1)], 1)
    assert [(d["stage"], d["qa"]) for d in rec.metadata["qa_dropped"]] == [("first", 1), ("second", 0)]
    assert rec.metadata["qa_origin"] == list(range(2, pairs))
    assert rec.conversations[0]["value"].startswith("<image>\n")


def test_too_few_passing_qas_reject_the_sample_and_keep_its_conversation_whole():
    rec = multiple_choice()
    conversation = [dict(t) for t in rec.conversations]
    pairs = len(conversation) // 2
    apply_qa_verdicts(rec, "judge", [QAVerdict(i, i == 0, "" if i == 0 else "wrong") for i in range(pairs)], min_qa=2)
    assert rec.is_rejected and rec.reject_stage == "judge"
    assert rec.reject_reason.startswith(f"too_few_qa: 1 of {pairs} QA pairs passed, 2 needed; first failure: qa 1: wrong")
    assert rec.conversations == conversation and rec.metadata["qa_dropped"] == []


def test_verdicts_must_cover_every_pair():
    rec = multiple_choice()
    with pytest.raises(ValueError, match="one verdict per QA pair"):
        apply_qa_verdicts(rec, "judge", [QAVerdict(0, True)], 1)


def test_the_metadata_has_one_shape_whether_or_not_a_qa_was_dropped():
    records, _ = run_stages([{"name": "procedural_scene"}, {"name": "qa_rules"}], unit=unit_for("SynthMultiChoice", 3))
    records[1].conversations[1]["value"] = "Q"  # not an option: that QA is dropped
    run_stages([{"name": "qa_rules", "id": "again"}], records)
    shapes = {tuple(sorted(json.loads(r.to_json_dict()["metadata"]))) for r in records}
    assert len(shapes) == 1 and {"qa_verdicts", "qa_dropped", "qa_origin"} <= set(next(iter(shapes)))
    assert records[1].metadata["qa_dropped"] and not records[0].metadata["qa_dropped"]
    entry_keys = {tuple(sorted(v)) for r in records for v in r.metadata["qa_verdicts"]}
    assert entry_keys == {("qa", "reason", "stage", "verdict")}


@pytest.mark.parametrize(("answer", "reason"), [
    ("", "empty_qa"), ("B C", "answer_not_in_options"),
    ("The circle on the left is red and the square", "truncated_answer"),
    ("the the the the the the the the the the the the the the the the the the the the the.", "word_repetition"),
    ("zxqv plmk grrt wqzz.", "unknown_words"), ("ok\x00", "charset"),
])
def test_each_qa_rule_names_its_reason(answer, reason):
    from filters.qa_rules import QARuleParams, qa_failure

    question = "A. red\nB. blue\n" + MULTIPLE_CHOICE_INSTRUCTION if reason == "answer_not_in_options" else "Why?"
    assert qa_failure(question, answer, QARuleParams()).startswith(reason)
