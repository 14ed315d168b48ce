"""What the demo model can learn in its budget: the two abilities a question like "What colour is the diamond?" needs.

1. vision: the warmed tower of fusion-cpu-small (train/vision_warmup.py, the demo's 1200 steps) with SigLIP's
   linear patch embedding, with the preset's convolutional stem (model/backbones.py ConvStem), and with the stem
   but warmed without the ViT text, side by side: at the patches where an object is centred, how often the
   warm-up heads name its shape and its colour, on the demo's held-out split (images the warm-up never saw), read
   with no text and beside each sample's ViT text, as the training reads them. (Right after the warm-up both
   towers read alike either way; the tower warmed without the text loses its patches to the text only in
   training, which benchmarks/demo_image_use.py measures on trained checkpoints.)
2. question reading: the preset's tower warmed with its answer head, once with the question's way into the
   tower (the LLM's input embeddings and the aux projector) trained beside it and once left as initialised (the
   earlier warm-up): how often the answer head, on the mean patch of each held-out image encoded beside one
   question, answers it, per question type beside the type's most common answer.
3. binding: the decoder of fusion-cpu-small (same architecture, trained from scratch at the demo's LR and batch)
   on the question with the image given as words, "<i> green diamond , red star </i> what colour is the star ?",
   fresh scenes every step: held-out accuracy every 500 steps beside the accuracy of naming any colour of the
   scene, the plateau a model reaches without binding the colour to the named shape.

Run: python benchmarks/demo_learnability.py --data outputs/demo/dataset [--steps 3000]  (about 20 minutes)
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generators.procedural.vocabulary import OBJECT_COLORS, SHAPES  # noqa: E402
from model.config import CPU_SMALL_LLAMA  # noqa: E402
from train.config import SourceSpec, load_train_config  # noqa: E402
from train.distributed import DistInfo  # noqa: E402
from train.modeling import build_model  # noqa: E402
from train.sources import resolve_sources  # noqa: E402
from train.vision_warmup import (  # noqa: E402
    WarmupExample,
    answer_accuracy,
    centre_accuracy,
    fit_warmup_heads,
    warmup_examples,
)

BATCH = 16  # the demo's global batch
EVAL_SCENES = 1000


def vision(data: str, threads: int) -> None:
    config = load_train_config("demo", [])
    train_sources = resolve_sources([SourceSpec(path=data, split="train")], seed=0)
    test_sources = resolve_sources([SourceSpec(path=data, split="test")], seed=0)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    print(f"vision warm-up: {config.vision_warmup.steps} steps of {config.vision_warmup.batch_size} images, "
          f"{threads} threads")
    print("centre accuracy on held-out images, read with no text and beside each sample's ViT text (TUNE)")
    print(f"{'tower':40s} {'seconds':>8s} {'shape':>7s} {'colour':>7s} {'shape+text':>11s} {'colour+text':>12s}")
    # label -> (model overrides, warmed beside the ViT text)
    variants = {"SigLIP linear embedding, text": ({"vision_tower.conv_stem": []}, True),
                "ConvStem, warmed without text": ({}, False),
                "ConvStem, text (preset)": ({}, True)}
    examples = None  # the variants share image size and patch grid, so the labelled examples are read once
    with tempfile.TemporaryDirectory() as out:  # one folder: later builds reuse the first's data tokenizer
        for label, (overrides, with_text) in variants.items():
            section = config.model.model_copy(update={"overrides": {**config.model.overrides, **overrides}})
            model = build_model(section, seed=0, sources=train_sources, out=Path(out), info=info)
            if examples is None:
                examples = [warmup_examples(model, sources, config.vision_warmup.max_images)[0]
                            for sources in (train_sources, test_sources)]
            train_examples, test_examples = examples
            started = time.perf_counter()
            heads, _ = fit_warmup_heads(model, train_examples if with_text else without_text(train_examples),
                                        config.vision_warmup, seed=0, progress=False)
            seconds = time.perf_counter() - started
            alone = centre_accuracy(model, heads, without_text(test_examples))
            guided = centre_accuracy(model, heads, test_examples)
            print(f"{label:40s} {seconds:8.0f} {alone['shape']:7.1%} {alone['colour']:7.1%} "
                  f"{guided['shape']:11.1%} {guided['colour']:12.1%}   ({alone['centred_patches']} patches)",
                  flush=True)


READ_TYPES = ("color_of_shape", "shape_of_color", "count_total", "count_shape", "exists", "background_pattern")


def question_reading(data: str) -> None:
    config = load_train_config("demo", [])
    train_sources = resolve_sources([SourceSpec(path=data, split="train")], seed=0)
    test_sources = resolve_sources([SourceSpec(path=data, split="test")], seed=0)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    print("\nquestion reading: the answer head on the mean patch of each held-out image beside one of its questions")
    rows = {}
    with tempfile.TemporaryDirectory() as out:
        for label, trained in (("text path trained", True), ("text path as initialised", False)):
            model = build_model(config.model, seed=0, sources=train_sources, out=Path(out), info=info)
            train_examples = warmup_examples(model, train_sources, config.vision_warmup.max_images)[0]
            test_examples = warmup_examples(model, test_sources, config.vision_warmup.max_images)[0]
            heads, _ = fit_warmup_heads(model, train_examples, config.vision_warmup, seed=0, progress=False,
                                        train_text_path=trained)
            rows[label] = answer_accuracy(model, heads, test_examples)
    labels = list(rows)
    print(f"{'question type':22s} {'questions':>9s} " + " ".join(f"{label:>26s}" for label in labels)
          + f" {'most common':>12s}")
    first = rows[labels[0]]
    for kind in READ_TYPES:
        if kind in first:
            print(f"{kind:22s} {first[kind]['questions']:9d} "
                  + " ".join(f"{rows[label][kind]['accuracy']:26.1%}" for label in labels)
                  + f" {first[kind]['most_common']:12.1%}", flush=True)


def without_text(examples: list[WarmupExample]) -> list[WarmupExample]:
    return [dataclasses.replace(e, vit_text_ids=[]) for e in examples]


def binding(steps: int, lr: float) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    shapes, colours = list(SHAPES), list(OBJECT_COLORS)
    words = shapes + colours + ["<i>", "</i>", ",", "what", "colour", "is", "the", "?"]
    vocab = {word: index + 3 for index, word in enumerate(words)}
    architecture = {k: v for k, v in CPU_SMALL_LLAMA.items() if k != "model_type"}
    architecture.update(vocab_size=len(vocab) + 3, max_position_embeddings=128)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**architecture))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def scenes(rng: random.Random, count: int):
        rows = []
        for _ in range(count):
            named = rng.sample(shapes, rng.randint(2, 5))
            worn = [rng.choice(colours) for _ in named]
            asked = rng.randrange(len(named))
            context = ["<i>"] + [w for c, s in zip(worn, named, strict=True) for w in (c, s, ",")] + ["</i>"]
            question = ["what", "colour", "is", "the", named[asked], "?"]
            rows.append(([vocab[w] for w in context + question], vocab[worn[asked]], {vocab[c] for c in worn}))
        return rows

    def tensors(rows):
        length = max(len(ids) for ids, _, _ in rows) + 1
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        labels = torch.full((len(rows), length), -100)
        for row, (prompt, answer, _) in enumerate(rows):
            ids[row, : len(prompt)] = torch.tensor(prompt)
            ids[row, len(prompt)] = labels[row, len(prompt)] = answer
        return ids, labels

    held_out = scenes(random.Random(1), EVAL_SCENES)
    any_colour = sum(1 / len(present) for _, _, present in held_out) / len(held_out)
    print(f"\nbinding from words: decoder {CPU_SMALL_LLAMA['num_hidden_layers']} layers x "
          f"{CPU_SMALL_LLAMA['hidden_size']}, batch {BATCH}, lr {lr}, fresh scenes every step")
    print(f"naming a colour of the scene at random: {any_colour:.1%} (the plateau without binding)")
    print(f"{'step':>6s} {'held-out accuracy':>18s}")
    rng = random.Random(0)
    test_ids, test_labels = tensors(held_out)
    for step in range(steps + 1):
        if step % 500 == 0:
            with torch.no_grad():
                logits = model(input_ids=test_ids).logits[:, :-1]
                where = test_labels[:, 1:] != -100
                accuracy = (logits[where].argmax(-1) == test_labels[:, 1:][where]).float().mean().item()
            print(f"{step:6d} {accuracy:18.1%}", flush=True)
        if step == steps:
            break
        ids, labels = tensors(scenes(rng, BATCH))
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="outputs/demo/dataset", help="a demo dataset folder (`make run` writes one)")
    parser.add_argument("--steps", type=int, default=3000, help="binding steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-vision", action="store_true")
    parser.add_argument("--skip-reading", action="store_true")
    parser.add_argument("--skip-binding", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.skip_vision and args.skip_reading) and not Path(args.data, "manifest.json").is_file():
        parser.error(f"--data {args.data}: not a dataset folder (no manifest.json); run `make run` first")
    if not args.skip_vision:
        vision(args.data, args.threads)
    if not args.skip_reading:
        question_reading(args.data)
    if not args.skip_binding:
        binding(args.steps, load_train_config("demo", []).optim.lr)


if __name__ == "__main__":
    main()
