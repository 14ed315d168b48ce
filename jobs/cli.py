"""The ``fusion`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.config import ConfigError, load_config

logger = logging.getLogger("fusion")


def add_synthesis_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="preset name in configs/ (e.g. demo) or a YAML path")
    parser.add_argument("--out", required=True, type=Path, help="output folder; rerunning resumes into it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set categories.SynthColor.train=100 (repeatable)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else embedded Ray)")
    parser.add_argument("--no-ray", action="store_true", help="run in this process without Ray (debugging)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusion", description="Synthesize multimodal QA data and train FUSION on it.")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="synthesize, filter and shard a dataset, with manifest and card")
    add_synthesis_arguments(synth)
    synth.set_defaults(handler=cmd_synth)

    run = commands.add_parser("run", help="the end-to-end job: synthesize, train, evaluate and report")
    add_synthesis_arguments(run)
    run.set_defaults(handler=cmd_run)

    card = commands.add_parser("card", help="(re)write the dataset card of an output folder from what is on disk")
    card.add_argument("dir", type=Path)
    card.set_defaults(handler=cmd_card)

    publish = commands.add_parser("publish", help="upload a dataset folder to the Hugging Face Hub")
    publish.add_argument("dir", type=Path)
    publish.add_argument("--repo-id", required=True, help="e.g. your-name/fusion-synth-demo")
    publish.add_argument("--private", action="store_true")
    publish.add_argument("--dry-run", action="store_true", help="validate the card and list the uploads, offline")
    publish.set_defaults(handler=cmd_publish)

    from jobs.train_commands import add_train_commands

    add_train_commands(commands)
    return parser


def cmd_synth(args: argparse.Namespace) -> int:
    from pipeline.runner import synthesize

    config = load_config(args.config, args.overrides)
    result = synthesize(config, args.out, address=args.address, use_ray=not args.no_ray)
    counts = result.manifest["counts"]
    print(f"dataset: {result.out_dir} ({counts['accepted']:,} samples kept, {counts['rejected']:,} rejected; "
          f"{result.units_run} shards written, {result.units_skipped} already complete)")
    print(f"card:    {result.card_path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Synthesize into OUT/dataset, then train, evaluate and report (jobs/train_commands.py)."""
    import time

    from jobs.train_commands import train_after_synthesis
    from pipeline.runner import synthesize

    config = load_config(args.config, args.overrides)
    started = time.perf_counter()
    result = synthesize(config, args.out / "dataset", address=args.address, use_ray=not args.no_ray)
    counts = result.manifest["counts"]
    print(f"dataset: {result.out_dir} ({counts['accepted']:,} samples kept, {counts['rejected']:,} rejected)")
    return train_after_synthesis(args, config, result.out_dir, time.perf_counter() - started)


def cmd_card(args: argparse.Namespace) -> int:
    from pipeline.card import validate_card, write_card

    path = write_card(args.dir)
    problems = validate_card(args.dir)
    print(f"card: {path}")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_publish(args: argparse.Namespace) -> int:
    from pipeline.publish import plan_upload, publish

    plan = plan_upload(args.dir, args.repo_id, args.private)
    print(plan.describe())
    if args.dry_run:
        print("dry run: card is valid; nothing uploaded")
        return 0
    print(f"published: {publish(plan)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a known failure gets one clear line; --verbose shows the traceback
        if args.verbose or not _is_user_facing(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1


def _is_user_facing(error: Exception) -> bool:
    from pipeline.publish import PublishError

    return isinstance(error, (PublishError, RuntimeError)) and not isinstance(error, NotImplementedError)


if __name__ == "__main__":
    sys.exit(main())
