"""Training throughput, measured side by side in one run on the demo data:

  1. the loader (shards -> parsed, tokenized, decoded, collated micro-batches, with the demo's DataLoader workers)
     against the trainer's consumption (optimizer steps of the demo config on batches already in memory): the loader
     must never be the bottleneck, so its samples/s must be at least 5x the trainer's;
  2. training tokens/s of FUSION against the plain LLaVA-style model of the same size (TUNE, CARD and DSM off, last
     ViT layer only), the same samples, the same step code.

Steps and loader passes are interleaved in rounds (loader, FUSION, plain, loader, ...) so that load drift on a shared
machine hits each alike; medians over rounds, with the per-round spread, are printed.

Run: python benchmarks/train_throughput.py [--data DATASET] [--rounds 3] [--steps 8]  (about 3 minutes)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.config import SourceSpec, load_train_config  # noqa: E402
from train.distributed import DistInfo  # noqa: E402
from train.loader import ShardLoader  # noqa: E402
from train.modeling import build_model  # noqa: E402
from train.optim import build_optimizer  # noqa: E402
from train.sources import resolve_sources  # noqa: E402

PLAIN = ["model.overrides.use_tune=false", "model.overrides.use_card=false",
         "model.overrides.use_multi_level_connector=false", "model.overrides.dsm_weight=0.0"]


def demo_dataset(work: Path) -> Path:
    from pipeline.config import load_config
    from pipeline.synthesis import synthesize

    out = work / "dataset"
    synthesize(load_config("demo", ["ray.progress=false"]), out, use_ray=False)
    return out


class Setup:
    def __init__(self, name: str, overrides: list[str], data: Path, work: Path, batches: int) -> None:
        self.name = name
        self.config = load_train_config("demo", overrides)
        self.sources = resolve_sources([SourceSpec(path=str(data))], self.config.seed)
        info = DistInfo(0, 1, 0, torch.device("cpu"))
        self.model = build_model(self.config.model, seed=0, sources=self.sources, out=work / "shared", info=info)
        self.model.uniform_execution = True
        self.optimizer = build_optimizer(self.model, self.config.optim)
        self.loader = ShardLoader(self.sources, self.model.sequence_builder, self.config.data, seed=0,
                                  micro_batch=self.config.batch.micro_batch, batches_per_epoch=batches,
                                  max_length=self.model.config.sequence.max_length)
        self.batches = [item.batch for item in self.loader.epoch(0)]  # the same samples for every measurement

    def load_pass(self) -> tuple[float, int]:
        """(seconds, samples) of the batches of an epoch after the first (worker start-up and the shuffle buffer's
        first fill are one-off costs, not throughput)."""
        batches = self.loader.epoch(0)
        next(batches)
        start = time.perf_counter()
        samples = sum(item.num_samples for item in batches)
        return time.perf_counter() - start, samples

    def train_steps(self, steps: int) -> tuple[float, int, int]:
        """(seconds, samples, LLM tokens) of `steps` optimizer steps of the demo's accumulation."""
        accumulation = self.config.batch.accumulation(1)
        samples = tokens = 0
        start = time.perf_counter()
        for step in range(steps):
            for micro in range(accumulation):
                batch = self.batches[(step * accumulation + micro) % len(self.batches)]
                output = self.model(batch, loss_chunk_tokens=self.config.loss_chunk_tokens)
                (output.loss / accumulation).backward()
                samples += batch.batch_size
                tokens += int(batch.attention_mask.sum())
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start, samples, tokens


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):9.1f}  [{min(values):.1f} .. {max(values):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="a dataset folder (default: synthesize the demo)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per round and model")
    parser.add_argument("--batches", type=int, default=24, help="micro-batches per loader pass")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="train-bench-") as temp:
        work = Path(temp)
        data = args.data or demo_dataset(work)
        fusion = Setup("FUSION", [], data, work, args.batches)
        plain = Setup("plain LLaVA", PLAIN, data, work, args.batches)
        fusion.train_steps(1), plain.train_steps(1)  # warm-up
        loader_rates, fusion_samples, fusion_tokens, plain_tokens = [], [], [], []
        for _ in range(args.rounds):
            seconds, samples = fusion.load_pass()
            loader_rates.append(samples / seconds)
            seconds, samples, tokens = fusion.train_steps(args.steps)
            fusion_samples.append(samples / seconds)
            fusion_tokens.append(tokens / seconds)
            seconds, _, tokens = plain.train_steps(args.steps)
            plain_tokens.append(tokens / seconds)

    workers = fusion.config.data.num_workers
    ratio = statistics.median(a / b for a, b in zip(loader_rates, fusion_samples))
    speed = statistics.median(a / b for a, b in zip(fusion_tokens, plain_tokens))
    print(f"demo config: model {fusion.config.model.preset}, micro-batch {fusion.config.batch.micro_batch}, "
          f"global batch {fusion.config.batch.global_batch}, {workers} loader worker(s), {args.rounds} rounds")
    print(f"{'':34}{'median':>9}  [min .. max]")
    print(f"{'loader samples/s':34}{spread(loader_rates)}")
    print(f"{'trainer consumption samples/s':34}{spread(fusion_samples)}")
    print(f"loader / trainer: {ratio:.1f}x ({'ok' if ratio >= 5 else 'TOO SLOW'}: the loader must stay >= 5x ahead)")
    print(f"{'FUSION training tokens/s':34}{spread(fusion_tokens)}")
    print(f"{'plain LLaVA training tokens/s':34}{spread(plain_tokens)}")
    print(f"FUSION / plain tokens/s: {speed:.2f} (FUSION tokens include its latent blocks; the paper reports "
          f"TUNE + DSM +2% and CARD +25% training time at its scale)")


if __name__ == "__main__":
    main()
