"""Facts and captions turned into LLaVA-format turns with the paper's answer-format instructions.

Each turn also yields its structured QA entry for the record's metadata; every entry has the same keys and
string values whatever the family, so one JSON schema fits all samples.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from generators.procedural.questions import YES, Fact
from generators.procedural.templates import YES_NO_OPTIONS
from pipeline.record import MULTIPLE_CHOICE_INSTRUCTION, SHORT_ANSWER_INSTRUCTION
from pipeline.record import IMAGE_TOKEN

CHOICES_PER_QUESTION = 4
OPTION_SEPARATOR = "|"  # options are stored as one string so questions without options keep the same schema


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str
    qa: dict[str, str]


def qa_entry(question_type: str, subject: str, answer: str, answer_text: str, *, claim: str = "",
             options: tuple[str, ...] = (), image_side: str = "") -> dict[str, str]:
    return {"question_type": question_type, "subject": subject, "claim": claim, "answer": answer,
            "answer_text": answer_text, "options": OPTION_SEPARATOR.join(options), "image_side": image_side}


def caption_turn(rng: random.Random, prompts: tuple[str, ...], caption: str, topic: str) -> Turn:
    return Turn(rng.choice(prompts), caption, qa_entry("caption", topic, caption, caption))


def short_answer_turn(fact: Fact) -> Turn:
    return Turn(f"{fact.question}\n{SHORT_ANSWER_INSTRUCTION}", fact.answer,
                qa_entry(fact.question_type, fact.subject, fact.answer, fact.answer, claim=fact.claim,
                         image_side=fact.image_side))


def lettered(question: str, options: tuple[str, ...]) -> str:
    lines = [f"{letter}. {option}" for letter, option in zip(string.ascii_uppercase, options)]
    return "\n".join([question, *lines, MULTIPLE_CHOICE_INSTRUCTION])


def multiple_choice_turn(rng: random.Random, fact: Fact) -> Turn:
    """A-D for facts with wrong alternatives; yes/no facts become two-option letter questions (A. Yes / B. No)."""
    if fact.is_yes_no:
        options = YES_NO_OPTIONS
        correct = options[0] if fact.answer == YES else options[1]
    else:
        options = tuple(rng.sample(fact.distractors, CHOICES_PER_QUESTION - 1)) + (fact.answer,)
        options = tuple(rng.sample(options, len(options)))
        correct = fact.answer
    letter = string.ascii_uppercase[options.index(correct)]
    return Turn(lettered(fact.question, options), letter,
                qa_entry(fact.question_type, fact.subject, letter, fact.answer, claim=fact.claim, options=options,
                         image_side=fact.image_side))


def conversation(turns: list[Turn]) -> list[dict[str, str]]:
    """LLaVA turns; only the first human turn carries the image token, at its start."""
    messages = []
    for index, turn in enumerate(turns):
        question = f"{IMAGE_TOKEN}\n{turn.question}" if index == 0 else turn.question
        messages += [{"from": "human", "value": question}, {"from": "gpt", "value": turn.answer}]
    return messages
