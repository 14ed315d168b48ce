"""QA rules: checks of each QA pair that need no model; a failing pair is dropped, not the whole sample.

Per pair: non-empty question and answer, the charset, letter soup (unknown words), degenerate repetition,
multiple choice with A.. options in order, a usable number of options and the answer among them, short
answers as short as their instruction asks, and long answers that end like a sentence (not cut off).
"""

from __future__ import annotations

import re

from pydantic import Field

from filters import text_stats
from filters.qa_verdicts import QAVerdict, QAVerifier, QAVerifierParams, qa_pairs
from pipeline.record import MULTIPLE_CHOICE_INSTRUCTION, SHORT_ANSWER_INSTRUCTION, SampleRecord
from pipeline.stage import UnitContext, register_stage

OPTION_LINE = re.compile(r"^\s*([A-Z])[.)]\s+\S", re.MULTILINE)
SENTENCE_END = re.compile(r"[.!?…][\"')\]]*$")


class QARuleParams(QAVerifierParams):
    min_options: int = Field(2, ge=2)
    max_options: int = Field(4, ge=2, description="The paper's multiple choice uses A-D")
    max_short_answer_words: int = Field(4, ge=1)
    max_disallowed_chars: float = Field(0.0, ge=0, le=1)
    max_unknown_words: float = Field(0.5, ge=0, le=1)
    unknown_words_min_count: int = Field(3, ge=1)
    max_word_repetition: float = Field(text_stats.PAPER_THRESHOLDS["max_word_repetition"], ge=0, le=1)
    sentence_end_from_words: int | None = Field(
        6, ge=1, description="Answers of at least this many words must end with . ! ? (else: truncated); null: off")
    max_answer_chars: int = Field(4000, ge=1)
    language: str = "en"


def qa_failure(question: str, answer: str, params: QARuleParams) -> str | None:
    """Why a QA pair fails, or None."""
    p = params
    answer = answer.strip()
    if not question.strip() or not answer:
        return "empty_qa: question or answer is empty"
    for part, text in (("question", question), ("answer", answer)):
        if text_stats.disallowed_character_ratio(text) > p.max_disallowed_chars:
            return f"charset: the {part} holds control, unassigned or replacement characters"
        if len(text.split()) >= p.unknown_words_min_count and \
                (ratio := text_stats.unknown_word_ratio(text, p.language)) > p.max_unknown_words:
            return f"unknown_words: {ratio:.2f} of the {part}'s words are unknown > {p.max_unknown_words:g}"
        if (ratio := text_stats.word_repetition_ratio(text)) > p.max_word_repetition:
            return f"word_repetition: the {part} repeats 10-grams ({ratio:.3f} > {p.max_word_repetition:g})"
    if len(answer) > p.max_answer_chars:
        return f"answer_too_long: {len(answer)} chars > {p.max_answer_chars}"
    if question.rstrip().endswith(MULTIPLE_CHOICE_INSTRUCTION):
        options = OPTION_LINE.findall(question)
        if not p.min_options <= len(options) <= p.max_options:
            return f"option_count: {len(options)} options, expected {p.min_options}-{p.max_options}"
        if options != [chr(ord("A") + i) for i in range(len(options))]:
            return f"option_letters: {options} are not A, B, C ... in order"
        if answer not in options:
            return f"answer_not_in_options: {answer[:20]!r} is not one of {options}"
    elif question.rstrip().endswith(SHORT_ANSWER_INSTRUCTION):
        if len(answer.split()) > p.max_short_answer_words:
            return f"short_answer_too_long: {len(answer.split())} words > {p.max_short_answer_words}"
    elif p.sentence_end_from_words and len(answer.split()) >= p.sentence_end_from_words and \
            not SENTENCE_END.search(answer):
        return f"truncated_answer: a {len(answer.split())}-word answer that does not end a sentence"
    return None


@register_stage("qa_rules")
class QARuleVerifier(QAVerifier):
    Params = QARuleParams
    params: QARuleParams

    def judge(self, records: list[SampleRecord], unit: UnitContext) -> list[list[QAVerdict]]:
        verdicts = []
        for record in records:
            reasons = [qa_failure(q, a, self.params) for q, a in qa_pairs(record)]
            verdicts.append([QAVerdict(i, reason is None, reason or "") for i, reason in enumerate(reasons)])
        return verdicts
