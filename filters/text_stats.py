"""Text quality statistics with the definitions of Data-Juicer's filters, which FUSION's paper used with
the thresholds of its Table 12 (see ``PAPER_THRESHOLDS``).

Each function takes one text and returns a ratio; the rule stage (``filters/text_rules.py``) compares
them with thresholds. Special characters are Data-Juicer's set: punctuation, digits, whitespace and common
typographic symbols, so ordinary prose has a ratio around 0.2 (spaces) and the paper keeps [0.165, 0.420].
"""

from __future__ import annotations

import math
import string
import unicodedata
from collections import Counter
from functools import lru_cache
from pathlib import Path

# Data-Juicer's SPECIAL_CHARACTERS (emoji aside, which the charset rule handles).
SPECIAL_CHARACTERS = frozenset(
    string.punctuation + string.digits + string.whitespace
    + "    　    ￼’“”–▬…✦�­£​•€«»°·═×士＾˘⇓（）§″′´¿−±∈﻿¢ø‚„½¼¾¹²³―⁃，ˌ¸‹›ʺˈʻ¦‐⠀‰‑≤≥‖◆●■►▼▲▴∆▻¡★☆✱ːº。¯˜¥ɪ≈†："
    + "⁄♡✓⊕․．⋅÷１‟；،、¨ाাी्े◦˚゜ʼ≖ʼ¤ッツシ℃√！【】‿∞➤～πه۩☛₨➩☻๑٪♥ıॽ《‘©﴿٬？▷Г♫∟™ª₪®「—❖」﴾》"
)

PAPER_THRESHOLDS = {
    "min_alnum_ratio": 0.60,
    "max_char_repetition": 0.0937,  # character 10-grams
    "max_word_repetition": 0.0309,  # word 10-grams
    "special_ratio_range": (0.165, 0.420),
    "max_flagged_ratio": 0.0,
    "max_perplexity": 5500.0,  # needs a language model; not computed here
}


def alnum_ratio(text: str) -> float:
    """Share of characters that are letters or digits."""
    return sum(ch.isalnum() for ch in text) / len(text) if text else 0.0


def special_character_ratio(text: str) -> float:
    return sum(ch in SPECIAL_CHARACTERS for ch in text) / len(text) if text else 0.0


def char_repetition_ratio(text: str, n: int = 10) -> float:
    """Share of all character n-grams taken by the sqrt(#distinct) most frequent repeated ones
    (Data-Juicer's character_repetition_filter)."""
    grams = Counter(text[i:i + n] for i in range(len(text) - n + 1))
    if not grams:
        return 0.0
    frequencies = sorted(grams.values(), reverse=True)
    repeated = sum(1 for f in frequencies if f > 1)
    top = min(int(math.sqrt(len(frequencies))), repeated)
    return sum(frequencies[:top]) / sum(frequencies)


def words(text: str) -> list[str]:
    """Lower-cased whitespace tokens with special characters stripped from their ends (Data-Juicer's
    ``words_refinement``); tokens that were only punctuation are dropped."""
    stripped = (w.lower().strip("".join(SPECIAL_CHARACTERS)) for w in text.split())
    return [w for w in stripped if w]


def word_repetition_ratio(text: str, n: int = 10) -> float:
    """Share of word n-grams that occur more than once (Data-Juicer's word_repetition_filter)."""
    tokens = words(text)
    grams = Counter(" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    total = sum(grams.values())
    return sum(f for f in grams.values() if f > 1) / total if total else 0.0


def flagged_word_ratio(text: str, flagged: frozenset[str]) -> float:
    tokens = words(text)
    return sum(t in flagged for t in tokens) / len(tokens) if tokens else 0.0


def unknown_word_ratio(text: str, language: str = "en") -> float:
    """Share of alphabetic words that ``wordfreq`` has never seen in ``language`` (zipf frequency 0): letter
    soup and mojibake score high, prose near 0. A cheap stand-in for perplexity when no LM is configured."""
    from wordfreq import zipf_frequency

    tokens = [t for t in words(text) if t.isalpha()]
    return sum(zipf_frequency(t, language) == 0 for t in tokens) / len(tokens) if tokens else 0.0


def disallowed_character_ratio(text: str) -> float:
    """Share of characters that are control characters, unassigned or private-use code points, or the
    replacement character: what broken decoding and binary garbage leave behind."""
    if not text:
        return 0.0
    bad = sum(1 for ch in text if ch == "\ufffd" or (unicodedata.category(ch) in ("Cc", "Cn", "Co", "Cs")
                                                       and ch not in "\n\t"))
    return bad / len(text)


@lru_cache(maxsize=8)
def flagged_words(path: str | None = None) -> frozenset[str]:
    """Words whose presence rejects a text: one per line in ``path``, or by default the English list that
    ships with ``better-profanity`` (single words only; its multi-word entries are skipped)."""
    if path is None:
        import better_profanity

        path = str(Path(better_profanity.__file__).parent / "profanity_wordlist.txt")
    entries = Path(path).read_text(encoding="utf-8").splitlines()
    return frozenset(w.strip().lower() for w in entries if w.strip() and " " not in w.strip())
