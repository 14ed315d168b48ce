"""Held-out evaluation: scoring rules, baselines of the same split, tables per category and question type, the run
report, and `fusion run` end to end on a tiny configuration."""

from __future__ import annotations

import json

import pytest

from train.checkpoint import checkpoint_folder
from train.evaluate import (
    EvalItem,
    add_baselines,
    cloze_question,
    correct_option,
    held_out_items,
    item_kind,
    format_table,
    score_options_by_likelihood,
    summarise,
)
from train.scoring import CAPTION, MULTIPLE_CHOICE, SHORT, YES_NO, option_letter, rouge_l, score, written_option


def test_scoring_rules():
    options = ["red", "blue", "green", "pink"]
    assert option_letter("B", options) == "B" and option_letter("(C) green", options) == "C"
    assert option_letter("green", options) == "C" and option_letter("purple", options) is None
    # the option's text then its letter (data.multiple_choice_answer: option_and_letter): the letter is the choice
    assert option_letter("green: C", options) == "C" and option_letter("blue: C", options) == "C"
    assert option_letter("green: E", options) is None and option_letter("Yes: A", ["Yes", "No"]) == "A"
    assert score(MULTIPLE_CHOICE, "A.", "A", options) == 1.0 and score(MULTIPLE_CHOICE, "E", "A", options) == 0.0
    assert score(YES_NO, "Yes, there is.", "yes", []) == 1.0 and score(YES_NO, "no", "yes", []) == 0.0
    assert score(SHORT, "The Red.", "red", []) == 1.0 and score(SHORT, "dark red", "red", []) == 0.0
    assert rouge_l("a red circle", "a red circle") == 1.0 and rouge_l("blue", "a red circle") == 0.0
    # the option form's text and letter, apart
    assert written_option("green: C", options) == (2, "C") and written_option("Blue:B", options) == (1, "B")
    assert written_option("purple: A", options) is None and written_option("C", options) is None
    assert 0 < rouge_l("a red square", "a red circle") < 1


def test_kinds_come_from_metadata_or_the_question_format():
    assert item_kind("What colour?\nA. red\nB. blue\nAnswer with the option's letter from the given choices "
                     "directly.", "A", None) == (MULTIPLE_CHOICE, MULTIPLE_CHOICE, ["red", "blue"])
    assert item_kind("Q?", "yes", {"question_type": "exists", "options": ""})[:2] == (YES_NO, "exists")
    assert item_kind("Describe.", "A long caption of the scene.", {"question_type": "caption"})[0] == CAPTION
    assert item_kind("What colour is the star?\nAnswer the question using a single word or phrase.", "red",
                     {"question_type": "color_of_shape", "options": ""})[:2] == (SHORT, "color_of_shape")


def item(category, question_type, kind, reference, options=(), prediction=""):
    result = EvalItem("k", category, 0, question_type, kind, [{"from": "human", "value": "q"}], reference,
                      list(options), None)
    result.prediction = prediction
    result.score = score(kind, prediction, reference, list(options))
    return result


def test_baselines_are_chance_and_the_majority_answer_of_the_same_split():
    items = [item("Short", "color_of_shape", SHORT, answer, prediction=answer)
             for answer in ["red", "red", "red", "blue"]]
    items += [item("MC", "count_total", MULTIPLE_CHOICE, letter, "abcd", prediction="A") for letter in "AABC"]
    add_baselines(items)
    results = summarise(items)
    rows = {row["category"]: row for row in results["categories"]}
    assert rows["Short"]["chance"] == pytest.approx(0.5) and rows["Short"]["majority"] == pytest.approx(0.75)
    assert rows["Short"]["model"] == 1.0 and rows["Short"]["margin"] == pytest.approx(0.25)
    assert rows["MC"]["chance"] == pytest.approx(0.25) and rows["MC"]["majority"] == pytest.approx(0.5)
    assert rows["MC"]["model"] == pytest.approx(0.5)
    checks = {check["check"]: check for check in results["checks"]}
    assert checks["colour questions (color_of_shape)"]["passed"] and not checks["multiple choice"]["passed"]


def test_multiple_choice_as_cloze_asks_without_options_and_has_its_own_baselines():
    question = ("What colour is the star?\nA. red\nB. blue\nAnswer with the option's letter from the given choices "
                "directly.")
    earlier = [{"from": "human", "value": "<image>\nHow many stars?"}, {"from": "gpt", "value": "2"}]
    asked = EvalItem("k", "MC", 1, "color_of_shape", MULTIPLE_CHOICE, [*earlier, {"from": "human", "value": question}],
                     "A", ["red", "blue"], b"png")
    # the question alone, with the image it is about
    assert cloze_question(asked) == {"from": "human", "value": "<image>\nWhat colour is the star?\nAnswer the "
                                                               "question using a single word or phrase."}
    items = [item("MC", "color_of_shape", MULTIPLE_CHOICE, letter, options, prediction="A")
             for letter, options in [("A", ["red", "blue"]), ("B", ["blue", "red"]), ("A", ["green", "red"]),
                                     ("B", ["red", "pink", "grey", "blue"])]]
    add_baselines(items)
    # the right texts are red, red, green, pink: always saying "red" is right twice
    assert [i.cloze_majority for i in items] == [1.0, 1.0, 0.0, 0.0]
    for i, choice in zip(items, ["red", "blue", "green", "pink"], strict=True):
        i.cloze_choice, i.cloze_score = choice, float(choice == i.options[ord(i.reference) - ord("A")])
    overall, per_type = summarise(items)["multiple_choice_cloze"]
    assert overall["model"] == pytest.approx(0.75) and overall["letter"] == pytest.approx(0.5)
    assert overall["chance"] == pytest.approx((0.5 * 3 + 0.25) / 4) and overall["majority"] == pytest.approx(0.5)
    assert per_type["question_type"] == "color_of_shape" and per_type["n"] == 4
    # a reference may name its option by text (converted data) as well as by letter
    assert correct_option(item("MC", "t", MULTIPLE_CHOICE, "blue", ["red", "blue"])) == "blue"
    assert correct_option(item("MC", "t", MULTIPLE_CHOICE, "(B) blue", ["red", "blue"])) == "blue"
    assert correct_option(item("MC", "t", MULTIPLE_CHOICE, "purple", ["red", "blue"])) == ""


def test_option_form_answers_tell_a_wrong_text_from_a_wrong_letter(tmp_path):
    from train.report import write_report

    options = ["red", "blue", "green", "pink"]
    # right text and its letter; right text, another letter; wrong text and its letter; a letter alone
    items = [item("MC", "color_of_shape", MULTIPLE_CHOICE, "C", options, prediction)
             for prediction in ["green: C", "green: A", "pink: D", "C"]]
    add_baselines(items)
    for i in items:
        i.cloze_choice, i.cloze_score = "green", 1.0
    results = summarise(items)
    overall, per_type = results["multiple_choice_cloze"]
    assert overall["letter"] == pytest.approx(0.5)  # "green: C" and "C"
    assert overall["text"] == pytest.approx(2 / 4)  # of every item: the letter alone wrote no text
    assert overall["agrees"] == pytest.approx(2 / 3)  # of the three that wrote a text and a letter
    assert per_type["agrees"] == overall["agrees"]
    report = write_report(tmp_path, results=results, paths={"metrics": tmp_path / "none.jsonl"}, summary={}).read_text()
    assert "| option text right | letter of the text written |" in report
    assert "| all | 4 | 50.0% | 50.0% | 66.7% | 100.0% |" in report
    assert "option text written right 50.0%, the letter after it that text's own 66.7%" in format_table(results)
    # answered by letter alone: no such columns
    letters = [item("MC", "color_of_shape", MULTIPLE_CHOICE, "C", options, "C")]
    add_baselines(letters)
    letters[0].cloze_choice, letters[0].cloze_score = "green", 1.0
    assert summarise(letters)["multiple_choice_cloze"][0]["agrees"] is None
    report = write_report(tmp_path, results=summarise(letters), paths={"metrics": tmp_path / "none.jsonl"}, summary={})
    assert "letter of the text written" not in report.read_text()


def test_cloze_picks_the_option_the_model_finds_most_likely_per_character(tiny_model):
    import io

    from tests.tiny_models import make_image
    from train.config import EvalSection

    buffer = io.BytesIO()
    make_image(2).save(buffer, format="PNG")
    prompt = [{"from": "human", "value": "<image>\nWhat colour is the ball?\nA. red\nB. a dark blue\nC. green\n"
                                         "Answer with the option's letter from the given choices directly."}]
    mc = EvalItem("k", "MC", 0, "color_of_shape", MULTIPLE_CHOICE, prompt, "B", ["red", "a dark blue", "green"],
                  buffer.getvalue())
    score_options_by_likelihood(tiny_model, [mc], EvalSection(batch_size=2), progress=False)
    asked = [{"from": "human", "value": "<image>\nWhat colour is the ball?\nAnswer the question using a single word "
                                        "or phrase."}]
    scored = tiny_model.answer_log_likelihoods(
        [make_image(2)] * 3, [[*asked, {"from": "gpt", "value": option}] for option in mc.options])
    per_character = [s.log_probability / len(option) for s, option in zip(scored, mc.options, strict=True)]
    assert mc.cloze_choice == mc.options[per_character.index(max(per_character))]
    assert mc.cloze_score == float(mc.cloze_choice == "a dark blue")


@pytest.mark.parametrize("right, passed", [(47, True), (46, False)])
def test_a_margin_of_exactly_ten_points_passes_the_check(right, passed):
    # 33 of 140 references are the majority answer: 47 right answers beat it by exactly 10 points, which floats
    # put at 0.09999999999999998
    references = ["red"] * 33 + [colour for colour in ("blue", "green", "pink", "grey", "brown") for _ in range(22)][:107]
    items = [item("Short", "color_of_shape", SHORT, reference, prediction=reference if i < right else "none")
             for i, reference in enumerate(references)]
    add_baselines(items)
    check = {c["check"]: c for c in summarise(items)["checks"]}["colour questions (color_of_shape)"]
    assert check["majority"] == pytest.approx(33 / 140) and check["model"] == pytest.approx(right / 140)
    assert check["passed"] is passed


def test_held_out_items_cover_every_family_and_question_type(small_dataset):
    items = held_out_items(str(small_dataset), "test", None)
    assert {i.category for i in items} == {"SynthColor", "SynthMultiChoice", "SynthConvShort"}
    assert {i.kind for i in items if i.category == "SynthColor"} == {CAPTION}
    assert {i.kind for i in items if i.category == "SynthMultiChoice"} == {MULTIPLE_CHOICE}
    assert len({i.question_type for i in items}) > 5
    for i in items:
        assert i.prompt[-1]["from"] == "human" and i.prompt[0]["value"].startswith("<image>")
        if i.kind == MULTIPLE_CHOICE:
            assert i.reference in "ABCD" and len(i.options) in (2, 4)


def test_fusion_run_trains_evaluates_and_reports(tmp_path, capsys):
    from jobs.cli import main

    out = tmp_path / "run"
    args = ["run", "--config", "demo", "--out", str(out), "--no-ray", "--set", "dataset.unit_size=6",
            "--set", "ray.progress=false", "--set", "categories={SynthColor: {train: 8, test: 3}, "
            "SynthMultiChoice: {train: 8, test: 3}}", "--set", "train.base=tiny", "--set", "train.max_steps=2",
            "--set", "train.binding_warmup={steps: 2, batch_size: 4, told_share: 0.5}",
            "--set", "train.vision_warmup={steps: 2, batch_size: 4, answer_through_llm: true, realign_steps: 2}",
            "--set", "train.data.multiple_choice_answer=option_and_letter"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "SynthMultiChoice" in printed and "check multiple choice" in printed
    assert "multiple choice as cloze" in printed
    report = (out / "report.md").read_text()
    assert "## Multiple choice as cloze" in report and "| all |" in report
    # the binding warm-up, in the answer form the run trains
    assert "2 steps on" in report and "the answer the option's text before its letter, told first in 50%" in report
    assert "2 projector steps" in report and (out / "train" / "answer_realignment.json").is_file()
    assert "multiple_choice_answer: option_and_letter" in (out / "train" / "train_config.yaml").read_text()
    assert "![training loss](loss_curve.png)" in report and (out / "loss_curve.png").stat().st_size > 1000
    assert "| SynthColor | ROUGE-L F1 |" in report and "| SynthMultiChoice | accuracy (option letter) |" in report
    results = json.loads((out / "eval" / "results.json").read_text())
    assert {row["category"] for row in results["categories"]} == {"SynthColor", "SynthMultiChoice"}
    for question_type in {row["question_type"] for row in results["question_types"]}:
        assert f"| {question_type} |" in report  # every question type is in the report
    assert (out / "dataset" / "manifest.json").is_file() and (out / "train" / "checkpoints" / "latest").is_file()
    # rerunning resumes: nothing is synthesized or trained again, evaluation and report are redone
    checkpoint = out / "train" / "checkpoints" / "step-00000002" / "model.safetensors"
    written = checkpoint.stat().st_mtime_ns
    assert main(args) == 0
    from train.metrics import read_metrics

    assert [r["step"] for r in read_metrics(out / "train" / "metrics.jsonl")] == [1, 2]
    assert checkpoint.stat().st_mtime_ns == written
    # `fusion evaluate` takes the training run folder or its `latest` pointer as well as a checkpoint folder
    for checkpoint in (out / "train", out / "train" / "checkpoints" / "latest"):
        assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(out / "dataset"),
                     "--out", str(tmp_path / "again"), "--config", "tiny"]) == 0
        assert "check multiple choice" in capsys.readouterr().out
    (tmp_path / "empty-run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        checkpoint_folder(tmp_path / "empty-run")


def test_two_local_evaluation_processes_answer_as_one_process_does(tiny_model, small_dataset, tmp_path):
    """Batches cut the same way give the same answers and scores whether one process or two answer them (both at one
    torch thread, so even the summation order is the same)."""
    import torch

    from train.config import EvalSection
    from train.evaluate import PREDICTIONS_FILE, evaluate

    checkpoint = tmp_path / "checkpoint"
    tiny_model.save_pretrained(checkpoint)
    settings = {"batch_size": 8, "max_new_tokens": 5, "max_new_tokens_short": 3}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = evaluate(checkpoint, str(small_dataset), tmp_path / "one", EvalSection(**settings), progress=False)
    finally:
        torch.set_num_threads(threads)
    pooled = evaluate(checkpoint, str(small_dataset), tmp_path / "two", EvalSection(**settings, processes=2),
                      progress=False)
    assert alone["items"] > 3 * settings["batch_size"]  # several batches went to each process
    one, two = ((tmp_path / run / PREDICTIONS_FILE).read_text().splitlines() for run in ("one", "two"))
    assert one == two and any(json.loads(line)["cloze_choice"] for line in one)
    assert alone == pooled


def test_evaluation_processes_name_a_missing_checkpoint_before_starting(small_dataset, tmp_path):
    from train.config import EvalSection
    from train.evaluate import evaluate

    with pytest.raises(FileNotFoundError, match="nowhere"):
        evaluate(tmp_path / "nowhere", str(small_dataset), tmp_path / "out", EvalSection(processes=2), progress=False)
