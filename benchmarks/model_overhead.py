"""Forward+backward cost of FUSION's components, measured side by side in one run.

Three variants of the same small model, built by the same code and differing only by config switches:

  plain      LLaVA-style: full view only, last ViT layer, no TUNE, no CARD, no DSM
  tune+dsm   text-guided ViT, multi-level connector, DSM loss
  full       tune+dsm plus CARD (4 tile passes, latent blocks, interaction layers)

Steps are interleaved (plain, tune+dsm, full, plain, ...) after a warm-up so that drift in machine load hits every
variant alike; medians and the median of per-round ratios are reported. Arithmetic (FLOPs of matmuls, attention and
convolutions) is counted too: it does not depend on the machine.

The paper's accounting (v3 Table 5): the baseline trains in 13.0 h, TUNE + DSM add about 2% and CARD about 25%,
both of the baseline's time (13.0 h x 1.27 = 16.5 h for full FUSION). The same increments over plain are printed
for several batch sizes. On a 2-core CPU a small batch is dominated by per-op overhead, and the ViT's element-wise
work (gelu-tanh, attention over 64 tokens) costs more per FLOP than the LLM's, so CARD's 4 tile passes cost more
than their arithmetic; the gap closes as rows per step grow. The verdict is taken at the largest batch measured
(16 by default: about 4k LLM positions per step, the order of one GPU step of the paper, whose stage 1 runs 8
samples of roughly 1k tokens per GPU).

The small model keeps the paper models' proportions (Phi-3.5-mini + SigLIP-SO400M):
  ViT / LLM width 192 / 512 (1152 / 3072), MLP ratios 3.75 and 2.69 (3.74, 2.67), head width 64 (72, 96),
  no grouped KV heads (Phi-3.5 has none), ViT about a tenth of the LLM's non-embedding parameters, the last ViT
  block dropped, an interaction layer after every third decoder layer, Q / image tokens 1/16 (mean Q of the
  paper's set, 53, against 729 patches: about 1/14).
The conversations are text-heavy: 64 image tokens in LLM sequences of 110-250 positions (the paper: 729 in roughly a
thousand). That makes the tile passes cheaper relative to the LLM than at paper scale and the question text in the
ViT (up to 32 tokens beside 64 patches) heavier; the FLOP columns show both.

Run: python benchmarks/model_overhead.py [--batch-sizes 4 8 16] [--repeats 8]  (about 5 minutes)
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
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
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 9,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "vocab_size": 512,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}

VISION_TOWER = {
    "model_type": "siglip_vision_model",
    "hidden_size": 192,
    "intermediate_size": 720,
    "num_hidden_layers": 8,  # 7 kept (drop_last_layers=1, as SO400M keeps 26 of 27)
    "num_attention_heads": 3,
    "patch_size": 8,
    "image_size": 64,
}

# v3 Table 5: training-time increments over the baseline's 13.0 h.
PAPER_TUNE_DSM_PERCENT = 2
PAPER_CARD_PERCENT = 25

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


@dataclass
class Measurement:
    batch_size: int
    sequence_length: dict[str, int]
    flops: dict[str, int]
    seconds: dict[str, list[float]]

    def median_ms(self, name: str) -> float:
        return statistics.median(self.seconds[name]) * 1e3

    def increments_over_plain(self, name: str, base: str) -> list[float]:
        """(t[name] - t[base]) / t[plain] per round: the paper's accounting, paired within a round."""
        rounds = zip(self.seconds[name], self.seconds[base], self.seconds["plain"])
        return [(value - reference) / plain for value, reference, plain in rounds]

    def increment_quartiles(self, name: str, base: str) -> tuple[float, float, float]:
        """(lower quartile, median, upper quartile) of the per-round increments: the noise a verdict lives with."""
        values = self.increments_over_plain(name, base)
        if len(values) < 2:
            return values[0], values[0], values[0]
        low, _, high = statistics.quantiles(values, n=4)
        return low, statistics.median(values), high



def describe(quartiles: tuple[float, float, float]) -> str:
    low, median, high = quartiles
    return f"{median:+.1%} [{low:+.1%}, {high:+.1%}]"


def compare_with_paper(quartiles: tuple[float, float, float], paper_percent: int) -> str:
    """The paper states whole percents ("about 2%", "about 25%"): the median is compared at that precision."""
    low, median, _ = quartiles
    if round(median * 100) <= paper_percent:
        return "no worse than the paper"
    if low <= paper_percent / 100:
        return "within this machine's noise of the paper (its figure lies inside the quartiles)"
    return "WORSE than the paper"


def measure(models: dict[str, FusionModel], samples: list, warmup: int, repeats: int) -> Measurement:
    batches = {
        name: model.sequence_builder.collate(samples, latent_count=LATENT_COUNT) for name, model in models.items()
    }
    flops = {name: count_flops(models[name], batches[name]) for name in VARIANTS}
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_index in range(warmup + repeats):
        for name in VARIANTS:
            elapsed = time_step(models[name], batches[name])
            if round_index >= warmup:
                seconds[name].append(elapsed)
    lengths = {name: batch.input_ids.shape[1] for name, batch in batches.items()}
    return Measurement(len(samples), lengths, flops, seconds)


def report(measurement: Measurement) -> None:
    m = measurement
    print(f"\nbatch {m.batch_size}: padded sequence length {m.sequence_length['full']} "
          f"(plain {m.sequence_length['plain']})")
    print(f"{'variant':<10}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'vs plain':>10}{'GFLOP':>8}{'FLOPs vs plain':>16}")
    baseline = m.median_ms("plain")
    for name in VARIANTS:
        values = [v * 1e3 for v in m.seconds[name]]
        print(f"{name:<10}{m.median_ms(name):>11.1f}{min(values):>9.1f}{max(values):>9.1f}"
              f"{m.median_ms(name) / baseline - 1:>+10.1%}{m.flops[name] / 1e9:>8.2f}"
              f"{m.flops[name] / m.flops['plain'] - 1:>+16.1%}")
    tune_flops = (m.flops["tune+dsm"] - m.flops["plain"]) / m.flops["plain"]
    card_flops = (m.flops["full"] - m.flops["tune+dsm"]) / m.flops["plain"]
    print(f"increments over plain, time median [quartiles] (paper: TUNE+DSM ~+{PAPER_TUNE_DSM_PERCENT}%, "
          f"CARD ~+{PAPER_CARD_PERCENT}%):")
    print(f"  TUNE+DSM {describe(m.increment_quartiles('tune+dsm', 'plain'))} time, {tune_flops:+.1%} FLOPs")
    print(f"  CARD     {describe(m.increment_quartiles('full', 'tune+dsm'))} time, {card_flops:+.1%} FLOPs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = Path(tmp) / "tokenizer"
        build_tokenizer(tokenizer_dir)
        models = {}
        for name, switches in VARIANTS.items():
            torch.manual_seed(0)
            models[name] = FusionModel.from_config(build_variant(tokenizer_dir, switches), weights="random").train()

    full = models["full"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.repeats} interleaved repeats after {args.warmup} warm-up round(s) per batch size")
    print(f"image tokens {full.native_image_grid ** 2}, Q {LATENT_COUNT}, "
          f"interaction after decoder layers {full.card.after_layers}")
    print(full.parameter_table())

    load_before = os.getloadavg()[0]
    measurements = []
    for batch_size in sorted(args.batch_sizes):
        samples = [(make_image(i, (96, 80)), conversation(i)) for i in range(batch_size)]
        measurements.append(measure(models, samples, args.warmup, args.repeats))
        report(measurements[-1])
    load_after = os.getloadavg()[0]

    largest = measurements[-1]
    print(f"\nat batch {largest.batch_size} (the most rows per step measured):")
    for label, name, base, paper_percent in (
        ("TUNE+DSM", "tune+dsm", "plain", PAPER_TUNE_DSM_PERCENT),
        ("CARD    ", "full", "tune+dsm", PAPER_CARD_PERCENT),
    ):
        quartiles = largest.increment_quartiles(name, base)
        print(f"  {label} {describe(quartiles)} vs the paper's ~+{paper_percent}%: "
              f"{compare_with_paper(quartiles, paper_percent)}")
    print(f"load average {load_before:.2f} before, {load_after:.2f} after ({os.cpu_count()} cores): "
          "numbers are only comparable on an otherwise idle machine")


if __name__ == "__main__":
    main()
