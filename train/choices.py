"""Multiple-choice turns: their lettered options, and the two forms an assistant may be trained to answer them in.

A lettered question lists its options as `A. red` lines and the data answers with a letter ("B"). A model may
instead be trained to name the option before its letter ("red: B", `data.multiple_choice_answer:
option_and_letter`): picking the letter is then a lookup of text the model has just written, not a second hop inside
one forward pass, which a small decoder trained from scratch does not learn in the demo's budget (it knows the
answer as cloze and misses its letter: train/binding_warmup.py). Scoring reads the letter of either form
(`train.scoring.option_letter`).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Literal

OPTION_LINE = re.compile(r"^([A-Z])\.\s*(.+)$")
LETTER = "letter"
OPTION_AND_LETTER = "option_and_letter"
AnswerForm = Literal["letter", "option_and_letter"]


@dataclass(frozen=True)
class ChoiceQuestion:
    """One multiple-choice turn: the lines before and after its options, the options, the right one's index."""

    before: tuple[str, ...]
    options: tuple[str, ...]
    after: tuple[str, ...]
    answer: int

    @property
    def letter(self) -> str:
        return string.ascii_uppercase[self.answer]


def parse_options(question: str) -> list[str]:
    """`A. red` lines of a multiple-choice question, in order."""
    return [m.group(2).strip() for line in question.splitlines() if (m := OPTION_LINE.match(line.strip()))]


def choice_question(question: str, answer: str) -> ChoiceQuestion | None:
    """The turn as a `ChoiceQuestion`, or None unless it has one block of at least two `A. ...` option lines,
    lettered A, B, ... in order, and the answer is one of their letters."""
    lines = [line.strip() for line in question.replace("<image>", "").splitlines() if line.strip()]
    matches = [(i, m) for i, line in enumerate(lines) if (m := OPTION_LINE.match(line))]
    letter = answer.strip().rstrip(".")
    if (len(matches) < 2 or [i for i, _ in matches] != list(range(matches[0][0], matches[0][0] + len(matches)))
            or "".join(m.group(1) for _, m in matches) != string.ascii_uppercase[:len(matches)]
            or len(letter) != 1 or letter not in string.ascii_uppercase[:len(matches)]):
        return None
    first, last = matches[0][0], matches[-1][0]
    return ChoiceQuestion(tuple(lines[:first]), tuple(m.group(2).strip() for _, m in matches),
                          tuple(lines[last + 1:]), string.ascii_uppercase.index(letter))


def option_and_letter(option: str, letter: str) -> str:
    # the text ends at ':' as its option line ends at the line break: with pieces that end a word with its space
    # (train/tokenizer.py) "red (B)" would write "red " for the option's "red", a token the lookup cannot match
    return f"{option}: {letter}"


def answer_in_form(option: str, letter: str, form: AnswerForm) -> str:
    return option_and_letter(option, letter) if form == OPTION_AND_LETTER else letter


def with_answer_form(conversation: list[dict[str, str]], form: AnswerForm) -> list[dict[str, str]]:
    """The conversation with every lettered answer of a multiple-choice turn written in `form` (other turns, and
    answers that are not one of their options' letters, as they are)."""
    if form == LETTER:
        return conversation
    turns = list(conversation)
    for index in range(1, len(turns), 2):
        question = choice_question(str(turns[index - 1].get("value", "")), str(turns[index].get("value", "")))
        if question is not None:
            turns[index] = {**turns[index], "value": answer_in_form(question.options[question.answer],
                                                                    question.letter, form)}
    return turns
