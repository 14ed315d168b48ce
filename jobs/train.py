"""Entry point of the trainer for torchrun and for `ray job submit`; takes the arguments of `fusion train`.

    torchrun --nproc_per_node 8 -m jobs.train --config stage2 --data /data/mix --out /ckpt/stage2 --set strategy=fsdp
    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env jobs/runtime_env.yaml \\
        -- python -m jobs.train --ray --num-workers 4 --gpus-per-worker 1 --config stage2 --data ... --out ...

With --ray the same training loop runs inside Ray Train's TorchTrainer, which starts the workers and their process
group; the run folder (--out) must be on storage every worker can reach.
"""

from __future__ import annotations

import argparse
import logging
import sys

from jobs.train_commands import add_train_arguments, cmd_train, user_errors
from pipeline.console_logging import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description="Train FUSION on WebDataset shards.")
    add_train_arguments(parser)
    parser.add_argument("--ray", action="store_true", help="run the loop in Ray Train workers (TorchTrainer)")
    parser.add_argument("--num-workers", type=int, default=1, help="Ray Train workers (ranks)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def cmd_train_on_ray(args: argparse.Namespace) -> int:
    from train.ray_train import train_on_ray

    result = train_on_ray(config=args.config, overrides=args.overrides, data=args.data, out=args.out,
                          resume=args.resume, stop_after=args.stop_after, num_workers=args.num_workers,
                          gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker)
    print(f"trained {result['steps']}/{result['total_steps']} steps on {args.num_workers} Ray Train workers")
    print(f"checkpoint: {result['checkpoint']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    return user_errors(cmd_train_on_ray if args.ray else cmd_train)(args)


if __name__ == "__main__":
    sys.exit(main())
