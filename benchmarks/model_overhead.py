"""Forward+backward cost of FUSION's components, measured side by side in one run.

Three variants of the same small model, built by the same code and differing only by config switches:

  plain      LLaVA-style: full view only, last ViT layer, no TUNE, no CARD, no DSM
  tune+dsm   text-guided ViT, multi-level connector, DSM loss
  full       tune+dsm plus CARD (4 tile passes, latent blocks, interaction layers)

Steps are interleaved (plain, tune+dsm, full, plain, ...) after a warm-up so that drift in machine load hits every
variant alike; the median per variant is reported with its ratio to plain. Proportions follow the paper-size models:
the ViT has about a tenth of the LLM's non-embedding parameters and sees about as many tokens per view as the LLM
sequence holds, Q / image tokens is about 1/16 and interaction layers follow every third decoder layer.

Run: python benchmarks/model_overhead.py [--repeats 10] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import (  # noqa: E402
    CardConfig,
    FusionConfig,
    ImageConfig,
    LanguageModelConfig,
    TuneConfig,
    VisionTowerConfig,
)
from model.fusion import FusionModel  # noqa: E402
from tests.tiny_models import build_tokenizer, make_image  # noqa: E402

LANGUAGE_MODEL = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 9,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": 512,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}

VISION_TOWER = {
    "model_type": "siglip_vision_model",
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 6,  # 5 kept: ViT ~ 11% of the LLM's non-embedding parameters, as SO400M vs Phi-3.5
    "num_attention_heads": 4,
    "patch_size": 8,
    "image_size": 64,
}

LATENT_COUNT = 4  # 8x8 = 64 image tokens per view; Q/P = 1/16, close to the paper's ~53/729

QUESTIONS = [
    ("What colour is the ball on the left side of the table?", "The ball on the left side of the table is red."),
    ("How many cubes are stacked near the window?", "There are three cubes stacked near the window."),
    ("Describe the image concisely.", "A blue square sits left of a green circle, below a yellow star."),
    ("Which shape is larger, the circle or the square?", "The circle is larger than the square."),
    ("Read the text written on the sign.", "The sign says OPEN in large white letters."),
]

VARIANTS = {
    "plain": {"use_tune": False, "use_card": False, "use_multi_level_connector": False, "dsm_weight": 0.0},
    "tune+dsm": {"use_tune": True, "use_card": False, "use_multi_level_connector": True, "dsm_weight": 0.1},
    "full": {"use_tune": True, "use_card": True, "use_multi_level_connector": True, "dsm_weight": 0.1},
}


def conversation(sample: int) -> list[dict[str, str]]:
    turns = 1 + sample % 3
    messages = []
    for turn in range(turns):
        question, answer = QUESTIONS[(sample + turn) % len(QUESTIONS)]
        prefix = "<image>\n" if turn == 0 else ""
        messages += [{"from": "human", "value": prefix + question}, {"from": "gpt", "value": answer}]
    return messages


def build_variant(tokenizer_dir: Path, switches: dict) -> FusionConfig:
    return FusionConfig(
        name="overhead-benchmark",
        language_model=LanguageModelConfig(architecture=dict(LANGUAGE_MODEL), tokenizer_source=str(tokenizer_dir)),
        vision_tower=VisionTowerConfig(architecture=dict(VISION_TOWER)),
        image=ImageConfig(image_size=64, tile_grid=2),
        tune=TuneConfig(vit_text_max_tokens=32),
        card=CardConfig(latent_counts=(LATENT_COUNT,), eval_latent_count=LATENT_COUNT, layer_stride=3, num_layers=3,
                        num_heads=8),
        **switches,
    )


def count_flops(model: FusionModel, batch) -> int:
    """Arithmetic of one forward+backward step (matmuls, attention, convolutions), independent of machine load."""
    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        model(batch).loss.backward()
    return counter.get_total_flops()


def time_step(model: FusionModel, batch) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    model(batch).loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = Path(tmp) / "tokenizer"
        build_tokenizer(tokenizer_dir)
        models, batches = {}, {}
        samples = [(make_image(i, (96, 80)), conversation(i)) for i in range(args.batch_size)]
        for name, switches in VARIANTS.items():
            torch.manual_seed(0)
            model = FusionModel.from_config(build_variant(tokenizer_dir, switches), weights="random").train()
            models[name] = model
            batches[name] = model.sequence_builder.collate(samples, latent_count=LATENT_COUNT)

    full = models["full"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.repeats} interleaved repeats after {args.warmup} warm-up rounds")
    print(f"sequence length {batches['full'].input_ids.shape[1]} (plain {batches['plain'].input_ids.shape[1]}), "
          f"image tokens {full.native_image_grid ** 2}, Q {LATENT_COUNT}, "
          f"interaction after decoder layers {full.card.after_layers}")
    print(full.parameter_table())

    flops = {name: count_flops(models[name], batches[name]) for name in VARIANTS}
    load_before = os.getloadavg()[0]
    timings: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_index in range(args.warmup + args.repeats):
        for name in VARIANTS:
            elapsed = time_step(models[name], batches[name])
            if round_index >= args.warmup:
                timings[name].append(elapsed)
    load_after = os.getloadavg()[0]

    baseline = statistics.median(timings["plain"])
    print(f"\n{'variant':<10}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'vs plain':>10}{'per-round':>11}"
          f"{'GFLOP':>8}{'FLOPs vs plain':>16}")
    for name, values in timings.items():
        median = statistics.median(values)
        # Ratio of steps run back to back in the same round: robust to slow drifts in machine load.
        paired = statistics.median(v / p for v, p in zip(values, timings["plain"]))
        print(f"{name:<10}{median * 1e3:>11.1f}{min(values) * 1e3:>9.1f}{max(values) * 1e3:>9.1f}"
              f"{median / baseline - 1:>+10.1%}{paired - 1:>+11.1%}{flops[name] / 1e9:>8.2f}"
              f"{flops[name] / flops['plain'] - 1:>+16.1%}")
    tune_dsm, card = statistics.median(timings["tune+dsm"]), statistics.median(timings["full"])
    print(f"\nTUNE+DSM vs plain {tune_dsm / baseline - 1:+.1%} (paper ~+2%); "
          f"CARD on top of TUNE+DSM {card / tune_dsm - 1:+.1%}; full FUSION vs plain {card / baseline - 1:+.1%} "
          f"(paper ~+25% for CARD)")
    print(f"CARD on top of TUNE+DSM in arithmetic alone: {flops['full'] / flops['tune+dsm'] - 1:+.1%} "
          "(4 extra ViT passes for the tiles, latent and marker tokens in the LLM, interaction layers)")
    print(f"load average {load_before:.2f} before, {load_after:.2f} after ({os.cpu_count()} cores): "
          "numbers are only comparable on an otherwise idle machine")

if __name__ == "__main__":
    main()
