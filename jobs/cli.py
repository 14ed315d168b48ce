"""The ``fusion`` command line. Every command works in a fresh process, or fails with one clear line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.config import ConfigError, load_config
from pipeline.console_logging import configure_logging

logger = logging.getLogger("fusion")


def add_synthesis_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="preset name in configs/ (e.g. demo) or a YAML path")
    parser.add_argument("--out", required=True, type=Path, help="output folder; rerunning resumes into it")
    add_override_argument(parser)
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else embedded Ray)")
    parser.add_argument("--no-ray", action="store_true", help="run in this process without Ray (debugging)")
    parser.add_argument("--no-cache", action="store_true", help="neither replay nor store model calls")
    parser.add_argument("--allow-version-change", action="store_true",
                        help="resume into a folder made with other package or stage versions")


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set categories.SynthColor.train=100 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusion", description="Synthesize multimodal QA data and train FUSION on it.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="synthesize, filter and shard a dataset, with manifest and card")
    add_synthesis_arguments(synth)
    synth.set_defaults(handler=cmd_synth)

    run = commands.add_parser("run", help="the end-to-end job: synthesize, train, evaluate and report")
    add_synthesis_arguments(run)
    run.set_defaults(handler=cmd_run)

    plan = commands.add_parser("plan", help="units, stages, pools and resources of a config, and a cost projection")
    plan.add_argument("--config", required=True)
    add_override_argument(plan)
    plan.add_argument("--target", type=int, default=None, help="accepted samples to project the cost of")
    plan.add_argument("--from-run", type=Path, default=None, help="project from this earlier run's manifest")
    plan.add_argument("--calibration-samples", type=int, default=8,
                      help="samples per category and split of the calibration run (when --from-run is not given)")
    plan.add_argument("--address", default=None)
    plan.add_argument("--no-ray", action="store_true", help="calibrate in this process without Ray")
    plan.set_defaults(handler=cmd_plan)

    card = commands.add_parser("card", help="(re)write the dataset card of an output folder from what is on disk")
    card.add_argument("dir", type=Path)
    card.set_defaults(handler=cmd_card)

    publish = commands.add_parser("publish", help="upload a dataset folder to the Hugging Face Hub")
    publish.add_argument("dir", type=Path)
    publish.add_argument("--repo-id", required=True, help="e.g. your-name/fusion-synth-demo")
    publish.add_argument("--private", action="store_true")
    publish.add_argument("--dry-run", action="store_true", help="validate the card and list the uploads, offline")
    publish.set_defaults(handler=cmd_publish)

    tiny = commands.add_parser("make-tiny-models", help="write tiny random LLM, diffusion, CLIP and VLM model folders")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(handler=cmd_make_tiny_models)

    cache = commands.add_parser("cache", help="the model-call cache of an output folder")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    clear = cache_commands.add_parser("clear", help="delete cached model calls (all stages, or one)")
    clear.add_argument("dir", type=Path)
    clear.add_argument("--stage", default=None, help="stage id whose calls to delete")
    clear.set_defaults(handler=cmd_cache_clear)

    from jobs.train_commands import add_train_commands

    add_train_commands(commands)
    add_filter_commands(commands)
    return parser


def add_filter_commands(commands) -> None:
    """`fusion reshard`, `fusion inspect` and `fusion filter-eval` (filtering late, looking, measuring)."""
    reshard = commands.add_parser("reshard", help="filter a dataset late by its scores into a new dataset")
    reshard.add_argument("dir", type=Path, help="a dataset folder (the output of fusion synth or reshard)")
    reshard.add_argument("--where", required=True,
                         help="which samples to keep, e.g. \"clip_score/clip_cosine >= 0.28 and text/qa_turns >= 2\"")
    reshard.add_argument("--out", required=True, type=Path, help="a new, empty folder")
    reshard.set_defaults(handler=cmd_reshard)

    inspect = commands.add_parser("inspect", help="a static HTML page of accepted and rejected samples and scores")
    inspect.add_argument("dir", type=Path)
    inspect.add_argument("--out", type=Path, default=None, help="the page (default: DIR/inspect/index.html)")
    inspect.add_argument("--per-category", type=int, default=6, help="accepted and rejected samples shown of each")
    inspect.set_defaults(handler=cmd_inspect)

    evaluate = commands.add_parser("filter-eval", help="precision and recall of each filter on corrupted procedural data")
    evaluate.add_argument("--config", default="filter-eval", help="preset or YAML: the generator and the filters")
    add_override_argument(evaluate)
    evaluate.add_argument("--per-family", type=int, default=40, help="clean samples of each category")
    evaluate.add_argument("--seed", type=int, default=0, help="which samples and corruptions")
    evaluate.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    evaluate.set_defaults(handler=cmd_filter_eval)


def cmd_reshard(args: argparse.Namespace) -> int:
    from pipeline.reshard import reshard

    manifest = reshard(args.dir, args.out, args.where)
    info = manifest["reshard"]
    print(f"dataset: {args.out} ({info['kept']:,} samples kept, {info['removed']:,} removed by --where)")
    print(f"card:    {args.out / 'README.md'}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.inspect import inspect_dataset

    result = inspect_dataset(args.dir, args.out, args.per_category)
    shown = sum(len(samples) for samples in result.shown.values())
    print(f"page:          {result.page} ({shown} samples in {len(result.shown)} categories)")
    if result.contact_sheet:
        print(f"contact sheet: {result.contact_sheet}")
    return 0


def cmd_filter_eval(args: argparse.Namespace) -> int:
    from filters.evaluation import evaluate_filters, format_table

    config = load_config(args.config, args.overrides)
    report = evaluate_filters(config, per_family=args.per_family, seed=args.seed)
    print(format_table(report))
    if args.json:
        import json

        args.json.write_text(json.dumps(report.to_dict(), indent=2))
        print(f"json: {args.json}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from pipeline.synthesis import synthesize

    config = load_config(args.config, args.overrides)
    result = synthesize(config, args.out, address=args.address, use_ray=not args.no_ray, use_cache=not args.no_cache,
                        allow_version_change=args.allow_version_change)
    counts = result.manifest["counts"]
    print(f"dataset: {result.out_dir} ({counts['accepted']:,} samples kept, {counts['rejected']:,} rejected; "
          f"{result.units_run} units run, {result.units_skipped} already complete)")
    for name, shortfall in sorted(counts["shortfalls"].items()):
        reasons = ", ".join(f"{r} ({n})" for r, n in shortfall["main_reject_reasons"].items())
        print(f"short:   {name}: {shortfall['accepted']:,} of {shortfall['target']:,} accepted; main reasons: {reasons}")
    print(f"card:    {result.card_path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Synthesize into OUT/dataset, then train, evaluate and report (jobs/train_commands.py)."""
    import time

    from jobs.train_commands import train_after_synthesis
    from pipeline.synthesis import synthesize

    config = load_config(args.config, args.overrides)
    started = time.perf_counter()
    result = synthesize(config, args.out / "dataset", address=args.address, use_ray=not args.no_ray,
                        use_cache=not args.no_cache, allow_version_change=args.allow_version_change)
    counts = result.manifest["counts"]
    print(f"dataset: {result.out_dir} ({counts['accepted']:,} samples kept, {counts['rejected']:,} rejected)")
    return train_after_synthesis(args, config, result.out_dir, time.perf_counter() - started)


def cmd_plan(args: argparse.Namespace) -> int:
    from pipeline.projection import describe_plan, project_costs

    config = load_config(args.config, args.overrides)
    print(describe_plan(config))
    print()
    print(project_costs(config, target=args.target, from_run=args.from_run, samples=args.calibration_samples,
                        address=args.address, use_ray=not args.no_ray))
    return 0


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


def cmd_make_tiny_models(args: argparse.Namespace) -> int:
    from generators.tiny_models import build_tiny_models

    for name, path in build_tiny_models(args.dir, args.seed).items():
        print(f"{name}: {path}")
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    from pipeline.cache import clear_cache

    if not (args.dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{args.dir / 'config.yaml'} not found: is {args.dir} the output of `fusion synth`?")
    removed = clear_cache(args.dir, args.stage)
    print(f"removed {removed} cache file(s) from {args.dir / 'cache' / (args.stage or '')}".rstrip("/"))
    return 0


def _version() -> str:
    from pipeline.provenance import ENGINE_DISTRIBUTION, git_sha, package_version

    return f"{package_version(ENGINE_DISTRIBUTION) or 'unknown'} (code {git_sha()[:12]})"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError) as error:
        if args.verbose:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a known failure gets one clear line; --verbose shows the traceback
        if args.verbose or not _is_user_facing(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1


def _is_user_facing(error: Exception) -> bool:
    from pipeline.publish import PublishError

    return isinstance(error, (PublishError, RuntimeError, ValueError, OSError)) and not isinstance(
        error, NotImplementedError)


if __name__ == "__main__":
    sys.exit(main())
