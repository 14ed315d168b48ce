"""When does a decoder of the demo's size learn to pick an option by its letter? The lookup behind
train/binding_warmup.py, on a word-level version of the task, side by side in one run.

A Llama with the demo decoder's architecture (`CPU_SMALL_LLAMA`: hidden 128, 4 layers) and a word-level vocabulary
of 24 answers is told the answer and asked for its letter among four options ("<q> v5 ? A . v1 B . v5 ... :" ->
"B"), with fresh questions every step (batch 64, linear ramp then constant LR, AdamW, gradient clipping at 1):

1. told the answer as the option's own token, at LR 3e-4 and at 2e-3 (the demo's LR before the warm-up);
2. told it as another token than the option's (`q5` for `v5`: " red" vs "red", as the byte-level tokenizer wrote
   an option and a short answer before train/tokenizer.py split words the other way), at 3e-4;
3. after (1) at 3e-4, the second hop: the question names `q5`, whose answer `v5` the decoder learns from short
   question rows mixed in; the letter of an answer worked out by the decoder, continued at 3e-4 and at 2e-3, and
   the same from a fresh decoder. Accuracy is on 500 held-out questions.

Run: python benchmarks/option_lookup_lr.py [--steps 800] [--second-hop-steps 300]   (about 5 minutes on an idle 2-core machine)
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import CPU_SMALL_LLAMA  # noqa: E402

ANSWERS = 24
LETTERS = "ABCD"
LRS = (("3e-4", 3e-4), ("2e-3", 2e-3))  # the binding warm-up's and the demo decoder's before it
WORDS = ([f"v{i}" for i in range(ANSWERS)] + [f"q{i}" for i in range(ANSWERS)] + list(LETTERS)
         + ["<q>", "<s>", "?", ":", ".", "\n"])
VOCAB = {word: index + 3 for index, word in enumerate(WORDS)}  # 0-2: pad, bos, eos


def decoder(seed: int) -> LlamaForCausalLM:
    architecture = {k: v for k, v in CPU_SMALL_LLAMA.items() if k != "model_type"}
    architecture.update(vocab_size=len(VOCAB) + 3, max_position_embeddings=128)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**architecture))


def questions(rng: random.Random, count: int, told: str, short_rows: bool = False) -> list[tuple[list[int], int]]:
    """`told`: "same" (the option's token), "other" (q_i for v_i) or "hop" (q_i, its answer learned elsewhere)."""
    rows = []
    for index in range(count):
        options = rng.sample(range(ANSWERS), len(LETTERS))
        answer = rng.randrange(len(LETTERS))
        if short_rows and index % 2 == 0:  # "<s> q5 ? :" -> "v5": the answer the second hop needs
            rows.append(([VOCAB[w] for w in ("<s>", f"q{options[answer]}", "?", ":")], VOCAB[f"v{options[answer]}"]))
            continue
        asked = f"v{options[answer]}" if told == "same" else f"q{options[answer]}"
        words = ["<q>", asked, "?"]
        for letter, option in zip(LETTERS, options, strict=True):
            words += ["\n", letter, ".", f"v{option}"]
        rows.append(([VOCAB[w] for w in words + ["\n", ":"]], VOCAB[LETTERS[answer]]))
    return rows


def tensors(rows: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(ids) for ids, _ in rows) + 1
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    labels = torch.full((len(rows), length), -100)
    for row, (prompt, target) in enumerate(rows):
        ids[row, : len(prompt)] = torch.tensor(prompt)
        ids[row, len(prompt)] = labels[row, len(prompt)] = target
    return ids, labels


@torch.no_grad()
def accuracy(model: LlamaForCausalLM, held_out: tuple[torch.Tensor, torch.Tensor]) -> float:
    ids, labels = held_out
    logits = model(input_ids=ids).logits[:, :-1]
    targets = labels[:, 1:]
    supervised = targets != -100
    return (logits[supervised].argmax(-1) == targets[supervised]).float().mean().item()


def train(model: LlamaForCausalLM, told: str, lr: float, steps: int, seed: int, short_rows: bool = False) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 25))
    rng = random.Random(seed)
    for _ in range(steps):
        ids, labels = tensors(questions(rng, 64, told, short_rows))
        model(input_ids=ids, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--second-hop-steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(2)
    held_out = {told: tensors(questions(random.Random(10_000), 500, told)) for told in ("same", "other", "hop")}
    started = time.perf_counter()
    print(f"{'run':58s} {'steps':>6s} {'letter right':>12s}")

    def report(name: str, model: LlamaForCausalLM, told: str, steps: int) -> float:
        value = accuracy(model, held_out[told])
        print(f"{name:58s} {steps:6d} {100 * value:11.1f}%  ({time.perf_counter() - started:.0f} s)", flush=True)
        return value

    formed = None
    for label, lr in LRS:
        model = decoder(0)
        train(model, "same", lr, args.steps, seed=1)
        report(f"told as the option's token, LR {label}", model, "same", args.steps)
        if lr == 3e-4:
            formed = model
    model = decoder(0)
    train(model, "other", 3e-4, args.steps, seed=1)
    report("told as another token than the option's, LR 3e-4", model, "other", args.steps)
    for label, lr in LRS:
        model = copy.deepcopy(formed)
        train(model, "hop", lr, args.second_hop_steps, seed=2, short_rows=True)
        report(f"second hop after the lookup formed, LR {label}", model, "hop", args.second_hop_steps)
    model = decoder(0)
    train(model, "hop", 3e-4, args.second_hop_steps, seed=2, short_rows=True)
    report("second hop from a fresh decoder, LR 3e-4", model, "hop", args.second_hop_steps)
    print(f"chance {100 / len(LETTERS):.1f}%")


if __name__ == "__main__":
    main()
