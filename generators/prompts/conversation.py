"""Validated QA responses turned into LLaVA turns, with the paper's answer-format instructions.

Each QA also becomes a metadata entry with the same keys in every family (``question``, ``answer``,
``kind``, ``options``), so filters can judge QAs one by one and the JSON schema never varies.
"""

from __future__ import annotations

import string
from typing import Any

from pydantic import BaseModel

from generators.prompts import schemas
from pipeline.record import IMAGE_TOKEN, MULTIPLE_CHOICE_INSTRUCTION, SHORT_ANSWER_INSTRUCTION

YES_NO_OPTIONS = ("Yes", "No")  # yes/no questions are two-option letter questions, as in the procedural data
OPTION_SEPARATOR = "|"


def qa_entry(question: str, answer: str, kind: str, options: tuple[str, ...] = ()) -> dict[str, str]:
    return {"question": question, "answer": answer, "kind": kind, "options": OPTION_SEPARATOR.join(options)}


def lettered(question: str, options: tuple[str, ...]) -> str:
    lines = [f"{letter}. {option}" for letter, option in zip(string.ascii_uppercase, options)]
    return "\n".join([question.strip(), *lines, MULTIPLE_CHOICE_INSTRUCTION])


def turns_of(response: BaseModel, answer_style: str) -> list[tuple[str, str, dict[str, str]]]:
    """(human text, assistant text, metadata entry) per QA of a validated response."""
    turns = []
    if isinstance(response, schemas.MultipleChoiceQAs):
        for item in response.questions:
            if isinstance(item, schemas.MultipleChoiceQuestion):
                options = tuple(item.options)
                turns.append((lettered(item.question, options), item.answer,
                              qa_entry(item.question, item.answer, "multiple_choice", options)))
            else:
                letter = "A" if item.answer == "yes" else "B"
                turns.append((lettered(item.question, YES_NO_OPTIONS), letter,
                              qa_entry(item.question, letter, "yes_no", YES_NO_OPTIONS)))
        return turns
    for qa in response.qas:
        question = qa.question.strip()
        if answer_style == "short":
            question = f"{question}\n{SHORT_ANSWER_INSTRUCTION}"
        turns.append((question, qa.answer.strip(), qa_entry(qa.question, qa.answer, answer_style)))
    return turns


def conversation(turns: list[tuple[str, str, Any]]) -> list[dict[str, str]]:
    """LLaVA turns; only the first human turn carries the image token, at its start."""
    messages = []
    for index, (question, answer, _) in enumerate(turns):
        messages += [{"from": "human", "value": f"{IMAGE_TOKEN}\n{question}" if index == 0 else question},
                     {"from": "gpt", "value": answer}]
    return messages
