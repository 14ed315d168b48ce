"""Text rules with the paper's thresholds: the statistics follow Data-Juicer's definitions, every statistic
is kept as a score, and garbage of every kind is rejected while ordinary prose passes."""

import random

import pytest

from filters import text_stats
from filters.evaluation import garbage_text
from filters.text_rules import TextRuleParams
from pipeline.record import SampleRecord
from tests.stage_helpers import run_stages

PROSE = ("A wooden table stands in a sunny kitchen. On it rest a red apple, two blue cups and a folded newspaper, "
         "while a cat sleeps on the chair beside the window and warm light falls across the tiled floor.")


def record(description=PROSE, caption="A red apple on a wooden table.", key="k_0"):
    return SampleRecord(key=key, category="SynthConvShort", split="train", seed=1, seed_caption=caption,
                        caption=caption, description=description,
                        conversations=[{"from": "human", "value": "<image>\nWhat fruit?"}, {"from": "gpt", "value": "apple"}])


def test_statistics_follow_data_juicer_definitions():
    assert text_stats.alnum_ratio("ab1 !") == pytest.approx(3 / 5)
    assert text_stats.special_character_ratio("ab1 !") == pytest.approx(3 / 5)  # digit, space, punctuation
    assert text_stats.word_repetition_ratio("one two three " * 2, n=3) == pytest.approx(2 / 4)  # "one two three" twice
    assert text_stats.word_repetition_ratio(PROSE) == 0.0
    # char 3-grams of "abcabc": abc x2, bca, cab -> 3 distinct, sqrt -> 1 repeated counted: 2 of 4
    assert text_stats.char_repetition_ratio("abcabc", n=3) == pytest.approx(2 / 4)
    assert text_stats.words("Hello, World!! 42") == ["hello", "world"]
    assert text_stats.disallowed_character_ratio("ok\x00") == pytest.approx(1 / 3)
    assert text_stats.unknown_word_ratio("the red apple") == 0.0
    assert text_stats.unknown_word_ratio("qzxv bplk the") == pytest.approx(2 / 3)


def test_defaults_are_the_papers_thresholds():
    params = TextRuleParams()
    assert (params.min_alnum_ratio, params.max_char_repetition, params.max_word_repetition) == (0.60, 0.0937, 0.0309)
    assert (params.min_special_ratio, params.max_special_ratio, params.max_flagged_ratio) == (0.165, 0.420, 0.0)


def test_prose_passes_and_every_statistic_is_kept():
    rec = record()
    run_stages([{"name": "text_rules"}], [rec])
    assert not rec.is_rejected, rec.reject_reason
    assert {f"text_rules/description/{m}" for m in ("alnum_ratio", "char_repetition", "word_repetition", "special_ratio",
                                                    "flagged_ratio", "disallowed_chars", "unknown_words", "words")} \
        <= set(rec.scores)
    assert "text_rules/seed_caption/alnum_ratio" in rec.scores


@pytest.mark.parametrize("seed", range(12))
def test_every_kind_of_garbage_is_rejected(seed):
    rec = record(description=garbage_text(random.Random(seed)))
    run_stages([{"name": "text_rules", "params": {"max_char_repetition": None}}], [rec])
    assert rec.is_rejected and rec.reject_stage == "text_rules", (rec.description, rec.scores)
    assert ": description " in rec.reject_reason


def test_reasons_name_field_metric_and_threshold_and_null_turns_a_rule_off():
    looping = record(description=" ".join(["the red circle is to the left of the blue square"] * 4))
    run_stages([{"name": "text_rules"}], [looping])
    assert looping.reject_reason.startswith("char_repetition: description ") and "> 0.0937" in looping.reject_reason
    again = record(description=looping.description)
    run_stages([{"name": "text_rules", "params": {"max_char_repetition": None}}], [again])
    assert again.reject_reason.startswith("word_repetition: description")
    flagged = record(caption="A damn red apple on a wooden table.")
    run_stages([{"name": "text_rules", "params": {"fields": ["caption"]}}], [flagged])
    assert flagged.reject_reason.startswith("flagged_ratio: caption")


def test_empty_fields_are_scored_but_not_checked():
    rec = record(description="")
    run_stages([{"name": "text_rules"}], [rec])
    assert not rec.is_rejected and rec.scores["text_rules/description/words"] == 0.0
