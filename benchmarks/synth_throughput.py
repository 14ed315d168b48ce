"""Synthesis throughput, measured side by side in one run on the same work.

Compares the Ray pipeline with 1 and 2 workers against a plain single-process loop that does the same
generation, filtering, JPEG encoding and shard writing (the floor). Rounds are interleaved so machine noise
hits every mode alike; the median of the rounds is reported. Ray's start-up is one-off and reported apart.

    python benchmarks/synth_throughput.py [--samples 4000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from pipeline.config import load_config  # noqa: E402
from pipeline.runner import synthesize  # noqa: E402

FAMILIES = ("SynthColor", "SynthCount", "SynthSpatial", "SynthText", "SynthMultiChoice", "SynthConvShort",
            "SynthContrastShort")


def config_for(samples: int, unit_size: int, workers: int | None):
    per_family = samples // len(FAMILIES)
    categories = "{" + ", ".join(f"{f}: {{train: {per_family}}}" for f in FAMILIES) + "}"
    overrides = [f"categories={categories}", f"dataset.unit_size={unit_size}", "ray.progress=false"]
    if workers:
        overrides.append(f"ray.workers={workers}")
    return load_config("demo", overrides)


def timed_run(config, out: Path, use_ray: bool) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = synthesize(config, out, use_ray=use_ray)
    elapsed = time.perf_counter() - start
    return elapsed, result.manifest["counts"]["accepted"] + result.manifest["counts"]["rejected"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4200)
    parser.add_argument("--unit-size", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="synth-bench-"))
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    ray_start = time.perf_counter() - start

    modes = {
        "plain loop (1 process)": (config_for(args.samples, args.unit_size, None), False),
        "ray pipeline, 1 worker": (config_for(args.samples, args.unit_size, 1), True),
        "ray pipeline, 2 workers": (config_for(args.samples, args.unit_size, 2), True),
    }
    # Warm-up: Ray starts its worker processes and imports the stages once; not counted.
    timed_run(config_for(700, 50, 2), work / "warmup", use_ray=True)

    rates: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name, (config, use_ray) in modes.items():
            elapsed, samples = timed_run(config, work / name.replace(" ", "_"), use_ray)
            rates[name].append(samples / elapsed)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    floor = statistics.median(rates["plain loop (1 process)"])
    print(f"\nsynthesis throughput: {args.samples} samples in units of {args.unit_size}, {args.rounds} interleaved "
          f"rounds, {os.cpu_count()} cores (Ray start-up {ray_start:.1f} s, not counted)")
    print(f"{'mode':<26}{'samples/s (median)':>20}{'rounds':>30}{'vs plain':>10}")
    for name, values in rates.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:<26}{median:>20.0f}{rounds:>30}{median / floor:>9.2f}x")
    ratio = statistics.median(rates["ray pipeline, 2 workers"]) / floor
    print(f"target: 2 workers >= 1.5x plain loop -> {ratio:.2f}x ({'met' if ratio >= 1.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
