"""Rule filter: structure, length and answer-format checks that need no model."""

from __future__ import annotations

import re

from pydantic import Field

from pipeline.record import IMAGE_TOKEN, MULTIPLE_CHOICE_INSTRUCTION, SHORT_ANSWER_INSTRUCTION, SampleRecord
from pipeline.stage import Filter, StageParams, register_stage

_OPTION_LINE = re.compile(r"^\s*([A-Z])[.)]\s+\S", re.MULTILINE)


class RuleParams(StageParams):
    max_caption_words: int = Field(12, ge=1)
    min_description_words: int = Field(1, ge=0)
    max_description_words: int = Field(400, ge=1)
    max_qa_turns: int = Field(8, ge=1, description="Human/assistant pairs per conversation")
    max_short_answer_words: int = Field(4, ge=1, description="For questions asking for a single word or phrase")
    max_turn_chars: int = Field(4000, ge=1)


@register_stage("rules")
class RuleFilter(Filter):
    """Rejects records whose text breaks the conversation format or the family's length limits."""

    Params = RuleParams
    params: RuleParams

    def score(self, record: SampleRecord) -> dict[str, float]:
        return {
            "caption_words": len(record.caption.split()),
            "description_words": len(record.description.split()),
            "qa_turns": len(record.conversations) // 2,
        }

    def check(self, record: SampleRecord, scores: dict[str, float]) -> str | None:
        p = self.params
        if scores["caption_words"] > p.max_caption_words:
            return f"caption_too_long: {scores['caption_words']:.0f} words > {p.max_caption_words}"
        if record.description and not p.min_description_words <= scores["description_words"] <= p.max_description_words:
            return (
                f"description_length: {scores['description_words']:.0f} words outside "
                f"[{p.min_description_words}, {p.max_description_words}]"
            )
        if scores["qa_turns"] > p.max_qa_turns:
            return f"too_many_turns: {scores['qa_turns']:.0f} > {p.max_qa_turns}"
        return conversation_format_error(record.conversations, p)


def conversation_format_error(conversations: list[dict[str, str]], params: RuleParams) -> str | None:
    """The first way ``conversations`` breaks the LLaVA format or an answer-format rule, or None."""
    if not conversations or len(conversations) % 2:
        return f"bad_turn_count: {len(conversations)} turns, expected a non-empty even number"
    for index, turn in enumerate(conversations):
        expected = "human" if index % 2 == 0 else "gpt"
        if set(turn) != {"from", "value"} or turn["from"] != expected:
            return f"bad_turn: turn {index} must be {{'from': {expected!r}, 'value': ...}}"
        if not turn["value"].strip():
            return f"empty_turn: turn {index} is empty"
        if len(turn["value"]) > params.max_turn_chars:
            return f"turn_too_long: turn {index} has {len(turn['value'])} chars > {params.max_turn_chars}"
        if (IMAGE_TOKEN in turn["value"]) != (index == 0):
            return f"image_token: {IMAGE_TOKEN} must open the first human turn and appear nowhere else (turn {index})"
    if not conversations[0]["value"].startswith(IMAGE_TOKEN + "\n"):
        return f"image_token: the first human turn must start with {IMAGE_TOKEN!r} and a newline"
    for index in range(0, len(conversations), 2):
        question, answer = conversations[index]["value"], conversations[index + 1]["value"].strip()
        if question.rstrip().endswith(MULTIPLE_CHOICE_INSTRUCTION):
            options = _OPTION_LINE.findall(question)
            if answer not in options:
                return f"answer_not_in_options: turn {index + 1} answers {answer[:20]!r}, options {options}"
        if question.rstrip().endswith(SHORT_ANSWER_INSTRUCTION):
            words = len(answer.split())
            if words > params.max_short_answer_words:
                return f"short_answer_too_long: turn {index + 1} has {words} words > {params.max_short_answer_words}"
    return None
