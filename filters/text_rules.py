"""Text rules with the paper's thresholds (DATA.md step 1) on seed captions, captions and descriptions.

Every statistic of every checked field is kept as a score (``<id>/<field>/<metric>``), whether or not its
rule is on, so other thresholds can be applied later without re-synthesis (``fusion reshard --where``).
A threshold set to null turns its rule off. The defaults are the paper's (Data-Juicer definitions, see
``filters/text_stats.py``) plus two garbage guards the paper's list lacks: a charset rule (control,
unassigned and replacement characters) and an unknown-word rule (letter soup), which stand in for the
optional perplexity filter when no language model is configured.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from filters import text_stats
from pipeline.record import SampleRecord
from pipeline.stage import Filter, StageParams, register_stage

TextField = Literal["seed_caption", "caption", "description"]
_T = text_stats.PAPER_THRESHOLDS


class TextRuleParams(StageParams):
    fields: list[TextField] = Field(["seed_caption", "description"], min_length=1,
                                    description="Record fields checked; an empty field is scored but not checked")
    min_alnum_ratio: float | None = Field(_T["min_alnum_ratio"], ge=0, le=1)
    max_char_repetition: float | None = Field(_T["max_char_repetition"], ge=0, le=1)
    char_repetition_n: int = Field(10, ge=1)
    max_word_repetition: float | None = Field(_T["max_word_repetition"], ge=0, le=1)
    word_repetition_n: int = Field(10, ge=1)
    min_special_ratio: float | None = Field(_T["special_ratio_range"][0], ge=0, le=1)
    max_special_ratio: float | None = Field(_T["special_ratio_range"][1], ge=0, le=1)
    max_flagged_ratio: float | None = Field(_T["max_flagged_ratio"], ge=0, le=1)
    flagged_words_file: str | None = Field(None, description="One word per line; default: better-profanity's list")
    max_disallowed_chars: float | None = Field(0.0, ge=0, le=1, description="Charset: control/unassigned/U+FFFD share")
    max_unknown_words: float | None = Field(0.5, ge=0, le=1, description="Share of words wordfreq has never seen")
    unknown_words_min_count: int = Field(3, ge=1, description="Words a text needs before the unknown-word rule applies")
    language: str = Field("en", description="wordfreq language of the unknown-word rule")
    min_words: int | None = Field(None, ge=0)
    max_words: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> TextRuleParams:
        if None not in (self.min_special_ratio, self.max_special_ratio) and self.min_special_ratio > self.max_special_ratio:
            raise ValueError("min_special_ratio must not exceed max_special_ratio")
        return self


def text_scores(text: str, params: TextRuleParams) -> dict[str, float]:
    return {
        "alnum_ratio": text_stats.alnum_ratio(text),
        "char_repetition": text_stats.char_repetition_ratio(text, params.char_repetition_n),
        "word_repetition": text_stats.word_repetition_ratio(text, params.word_repetition_n),
        "special_ratio": text_stats.special_character_ratio(text),
        "flagged_ratio": text_stats.flagged_word_ratio(text, text_stats.flagged_words(params.flagged_words_file)),
        "disallowed_chars": text_stats.disallowed_character_ratio(text),
        "unknown_words": text_stats.unknown_word_ratio(text, params.language),
        "words": float(len(text.split())),
    }


def text_rule_failure(scores: dict[str, float], params: TextRuleParams) -> str | None:
    """The first rule ``scores`` break, as ``<rule>: <value> <op> <threshold>``, or None."""
    p = params
    checks = [
        ("disallowed_chars", p.max_disallowed_chars, ">"),
        ("alnum_ratio", p.min_alnum_ratio, "<"),
        ("special_ratio", p.min_special_ratio, "<"),
        ("special_ratio", p.max_special_ratio, ">"),
        ("char_repetition", p.max_char_repetition, ">"),
        ("word_repetition", p.max_word_repetition, ">"),
        ("flagged_ratio", p.max_flagged_ratio, ">"),
        ("words", p.min_words, "<"),
        ("words", p.max_words, ">"),
    ]
    if scores["words"] >= p.unknown_words_min_count:
        checks.append(("unknown_words", p.max_unknown_words, ">"))
    for metric, threshold, op in checks:
        if threshold is None:
            continue
        value = scores[metric]
        if (op == "<" and value < threshold) or (op == ">" and value > threshold):
            return f"{metric}: {value:.4g} {op} {threshold:g}"
    return None


@register_stage("text_rules")
class TextRuleFilter(Filter):
    """Rejects a record whose checked text breaks a rule; the reason names the field, metric and threshold."""

    Params = TextRuleParams
    params: TextRuleParams

    def score(self, record: SampleRecord) -> dict[str, float]:
        scores = {}
        for field in self.params.fields:
            for metric, value in text_scores(getattr(record, field), self.params).items():
                scores[f"{field}/{metric}"] = value
        return scores

    def check(self, record: SampleRecord, scores: dict[str, float]) -> str | None:
        for field in self.params.fields:
            if not getattr(record, field).strip():
                continue
            prefix = f"{field}/"
            failure = text_rule_failure({k.removeprefix(prefix): v for k, v in scores.items()
                                         if k.startswith(prefix)}, self.params)
            if failure:
                rule, _, detail = failure.partition(": ")
                return f"{rule}: {field} {detail}"
        return None
