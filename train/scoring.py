"""Answer scoring for held-out evaluation: option letters, yes/no, exact match of short answers, ROUGE-L captions.

Short answers use the VQA normalisation (lower case, punctuation and articles removed). Captions and long answers
are scored with ROUGE-L F1 over words (longest common subsequence, Lin 2004), a standard caption metric that
needs no reference corpus statistics, so every sample is scored on its own.
"""

from __future__ import annotations

import re
import string

MULTIPLE_CHOICE = "multiple_choice"
YES_NO = "yes_no"
SHORT = "short"
CAPTION = "caption"
LONG = "long"
EXACT_KINDS = (MULTIPLE_CHOICE, YES_NO, SHORT)
METRIC_NAMES = {MULTIPLE_CHOICE: "accuracy (option letter)", YES_NO: "accuracy (yes/no)",
                SHORT: "accuracy (exact match)", CAPTION: "ROUGE-L F1", LONG: "ROUGE-L F1"}

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})
_LETTER = re.compile(r"^\(?([A-Z])(?:[).:\s]|$)")
_OPTION_THEN_LETTER = re.compile(r"^(.*?):\s*([A-Z])\s*$", re.DOTALL)  # "red: B": train.choices.option_and_letter


def normalize_answer(text: str) -> str:
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def words(text: str) -> list[str]:
    return text.lower().translate(_PUNCTUATION).split()


def option_letter(prediction: str, options: list[str]) -> str | None:
    """The letter a prediction picks: a letter after the option's text ("red: B"), a leading letter, or the text of
    one option."""
    text = prediction.strip()
    after_option, leading = _OPTION_THEN_LETTER.match(text), _LETTER.match(text)
    for letter in (after_option and after_option.group(2), leading and leading.group(1)):
        if letter and (not options or ord(letter) - ord("A") < len(options)):
            return letter
    index = option_index(text, options)
    return None if index is None else string.ascii_uppercase[index]


def option_index(text: str, options: list[str]) -> int | None:
    """The index of the option `text` names (compared after answer normalisation), or None."""
    normalized = normalize_answer(text)
    return next((index for index, option in enumerate(options) if normalize_answer(option) == normalized), None)


def written_option(prediction: str, options: list[str]) -> tuple[int, str] | None:
    """(index of the option whose text an answer in the option form writes, the letter it writes after it): (2, "B")
    for "green: B" among red, blue, green; None when the prediction is not one option's text and a letter."""
    match = _OPTION_THEN_LETTER.match(prediction.strip())
    index = None if match is None else option_index(match.group(1), options)
    return None if index is None else (index, match.group(2))


def yes_no(text: str) -> str | None:
    first = normalize_answer(text).split()[:1]
    return first[0] if first and first[0] in ("yes", "no") else None


def lcs_length(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    candidate, target = words(prediction), words(reference)
    common = lcs_length(candidate, target)
    if common == 0:
        return 0.0
    precision, recall = common / len(candidate), common / len(target)
    return 2 * precision * recall / (precision + recall)


def score(kind: str, prediction: str, reference: str, options: list[str]) -> float:
    """1.0 / 0.0 for answers with one right form, ROUGE-L F1 in [0, 1] for captions and long answers."""
    if kind == MULTIPLE_CHOICE:
        return float(option_letter(prediction, options) == reference.strip())
    if kind == YES_NO:
        return float(yes_no(prediction) == yes_no(reference))
    if kind == SHORT:
        return float(normalize_answer(prediction) == normalize_answer(reference))
    return rouge_l(prediction, reference)
