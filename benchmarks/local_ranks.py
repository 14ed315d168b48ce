"""Training speed of one process against `local_ranks: 2` (DDP ranks of one torch thread each), side by side in one run.

Each configuration is a fresh `fusion train` process on the same demo dataset with the warm-ups off (and
`data.split: samples`, so both ranks read every family, as one process does), run in
alternating rounds (one, two, one, two, ...) so load drift on a shared machine hits both alike; the median step time
after the first 20 steps and the mean (what the wall time follows, slow steps included) are compared, and the
ratios are printed per round and as the median of rounds.

Run: python benchmarks/local_ranks.py [--data DATASET] [--rounds 2] [--steps 120]  (about 1 minute per run)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FUSION = str(Path(sys.executable).parent / "fusion")
SKIPPED_STEPS = 20  # start-up: the loader's first buffer, the allocator's first sizes


def step_seconds(data: str, out: Path, steps: int, ranks: int) -> tuple[float, float]:
    """(median, mean) seconds per step after the first SKIPPED_STEPS: the mean, with its slow steps, is wall time."""
    command = [FUSION, "train", "--config", "demo", "--data", data, "--out", str(out),
               "--set", f"max_steps={steps}", "--set", f"local_ranks={ranks}", "--set", "data.split=samples",
               "--set", "log.progress=false",
               "--set", "log.every_steps=1", "--set", "log.tensorboard=false", "--set", "vision_warmup.steps=0",
               "--set", "vision_warmup.realign_steps=0", "--set", "binding_warmup.steps=0",
               "--set", f"checkpoint.every_steps={steps}"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["step_seconds"] for r in rows if r["step"] > SKIPPED_STEPS]
    return statistics.median(seconds), statistics.fmean(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO / "outputs" / "demo" / "dataset"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    if not (Path(args.data) / "manifest.json").is_file():
        sys.exit(f"no dataset at {args.data}: run `make run` first or pass --data")
    medians, means = [], []
    with tempfile.TemporaryDirectory() as work:
        for round_ in range(args.rounds):
            one = step_seconds(args.data, Path(work) / f"one-{round_}", args.steps, ranks=1)
            two = step_seconds(args.data, Path(work) / f"two-{round_}", args.steps, ranks=2)
            medians.append(one[0] / two[0])
            means.append(one[1] / two[1])
            print(f"round {round_ + 1}: s/step median (mean) one process {one[0]:.3f} ({one[1]:.3f}), two local "
                  f"ranks {two[0]:.3f} ({two[1]:.3f}) -> {medians[-1]:.2f}x ({means[-1]:.2f}x) the steps per second")
    print(f"two local ranks: {statistics.median(medians):.2f}x the steps per second of one process by median step, "
          f"{statistics.median(means):.2f}x by mean step (wall time); median of {args.rounds} rounds, global batch "
          f"and data the same")


if __name__ == "__main__":
    main()
