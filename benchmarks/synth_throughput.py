"""Synthesis throughput, measured side by side in one run on the same work.

Compares the Ray pipeline with 1 and with 2 workers against a plain single-process loop that does the same
generation, filtering, JPEG encoding and shard writing (the floor). All Ray runs share one embedded Ray with
2 CPUs; "1 worker" asks for 2 CPUs per unit task, so Ray's scheduler runs one unit at a time, "2 workers"
asks for 1 CPU per task. Rounds are interleaved so machine noise hits every mode alike; the median of the
rounds is reported. Ray's start-up and the first start of its worker processes are one-off costs, reported
apart. "busy workers" is the time spent inside units divided by wall time: how many units were being worked
on at once, on average.

    python benchmarks/synth_throughput.py [--samples 8400] [--unit-size 250] [--rounds 3]
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

import ray  # noqa: E402

from generators.procedural import family_names  # noqa: E402
from pipeline.config import RunConfig, load_config  # noqa: E402
from pipeline.runner import synthesize  # noqa: E402

FAMILIES = tuple(family_names())
PLAIN = "plain loop (1 process)"
RAY_CPUS = 2


def config_for(samples: int, unit_size: int, cpus_per_unit: int = 1) -> RunConfig:
    per_family = max(1, samples // len(FAMILIES))
    categories = "{" + ", ".join(f"{f}: {{train: {per_family}}}" for f in FAMILIES) + "}"
    config = load_config("demo", [f"categories={categories}", f"dataset.unit_size={unit_size}", "ray.progress=false"])
    for spec in config.stages:
        spec.resources.num_cpus = cpus_per_unit
    return config


def timed_run(config: RunConfig, out: Path, use_ray: bool) -> tuple[float, float]:
    """Samples per second and the average number of units worked on at once."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = synthesize(config, out, use_ray=use_ray)
    elapsed = time.perf_counter() - start
    samples = result.manifest["counts"]["accepted"] + result.manifest["counts"]["rejected"]
    return samples / elapsed, result.busy_seconds / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8400)
    parser.add_argument("--unit-size", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    modes = {
        PLAIN: (config_for(args.samples, args.unit_size), False),
        "ray pipeline, 1 worker": (config_for(args.samples, args.unit_size, cpus_per_unit=RAY_CPUS), True),
        "ray pipeline, 2 workers": (config_for(args.samples, args.unit_size, cpus_per_unit=1), True),
    }
    rates: dict[str, list[float]] = {name: [] for name in modes}
    busy: dict[str, list[float]] = {name: [] for name in modes}
    work = Path(tempfile.mkdtemp(prefix="synth-bench-"))
    start = time.perf_counter()
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    synthesize(config_for(len(FAMILIES) * 40, 20), work / "warmup")  # starts Ray's worker processes
    startup = time.perf_counter() - start
    try:
        for _ in range(args.rounds):
            for name, (config, use_ray) in modes.items():
                rate, busy_ratio = timed_run(config, work / name.replace(" ", "_").replace(",", ""), use_ray)
                rates[name].append(rate)
                busy[name].append(busy_ratio)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    config = modes[PLAIN][0]

    floor = statistics.median(rates[PLAIN])
    samples = sum(c.train + c.test for c in config.categories.values())
    print(f"\nsynthesis throughput: {samples} samples in units of {args.unit_size}, {args.rounds} interleaved rounds, "
          f"{os.cpu_count()} cores; Ray start-up and warm-up {startup:.1f} s, not counted; "
          f"load average now {os.getloadavg()[0]:.2f}")
    print(f"{'mode':<26}{'samples/s (median)':>20}{'rounds':>24}{'vs plain':>10}{'busy workers':>14}")
    for name, values in rates.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:<26}{median:>20.0f}{rounds:>24}{median / floor:>9.2f}x{statistics.median(busy[name]):>14.2f}")
    ratio = statistics.median(rates["ray pipeline, 2 workers"]) / floor
    print(f"target: 2 workers >= 1.5x plain loop -> {ratio:.2f}x ({'met' if ratio >= 1.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
