"""`fusion train`, `fusion evaluate`, `fusion convert`, and the training half of `fusion run`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def user_errors(handler):
    """A config, data or template problem gets one line naming what is at fault and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        from model.config import ConfigError as ModelConfigError
        from model.sequence import LabelMaskError
        from train.config import TrainConfigError
        from train.convert import ConvertError
        from train.sources import DataSourceError

        try:
            return handler(args)
        except (TrainConfigError, DataSourceError, ConvertError, LabelMaskError, ModelConfigError) as error:
            if getattr(args, "verbose", False):
                raise
            print(f"error: {error}", file=sys.stderr)
            return 2

    return run


def add_train_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train FUSION on WebDataset shards (one process, torchrun or Ray)")
    add_train_arguments(train)
    train.set_defaults(handler=user_errors(cmd_train))

    evaluate = commands.add_parser("evaluate", help="held-out accuracy of a checkpoint, beside chance and majority")
    evaluate.add_argument("--checkpoint", required=True, type=Path,
                          help="a checkpoint or model folder, or a training run folder (its newest checkpoint)")
    evaluate.add_argument("--data", required=True, help="dataset folder with a held-out split")
    evaluate.add_argument("--out", required=True, type=Path)
    evaluate.add_argument("--config", default="demo", help="training config whose eval section to use")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    evaluate.set_defaults(handler=user_errors(cmd_evaluate))

    task = commands.add_parser("lmms-task", help="write a local lmms-eval task for a held-out split")
    task.add_argument("--data", required=True, help="dataset folder with a held-out split")
    task.add_argument("--out", required=True, type=Path, help="task folder for lmms-eval --include_path")
    task.add_argument("--split", default="test")
    task.add_argument("--max-per-category", type=int, default=None)
    task.set_defaults(handler=user_errors(cmd_lmms_task))

    convert = commands.add_parser("convert", help="turn LLaVA-style JSON + images or a Hugging Face image-text "
                                                  "dataset folder into shards of the dataset contract")
    from train.convert import add_convert_arguments

    add_convert_arguments(convert)
    convert.set_defaults(handler=user_errors(cmd_convert))


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from train.config import preset_names

    parser.add_argument("--config", required=True, help=f"preset ({', '.join(preset_names())}) or a YAML path")
    parser.add_argument("--data", default=None, help="dataset folder, tar glob or fsspec URL: the path of the "
                        "config's sources that name none, else the only source")
    parser.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, metrics, config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training config field, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("--stop-after", type=int, default=None, help="stop (with a checkpoint) after this step")


def cmd_train(args: argparse.Namespace) -> int:
    from train.config import load_train_config
    from train.trainer import train

    config = load_train_config(args.config, args.overrides)
    result = train(config, args.out, data=args.data, resume=args.resume, stop_after=args.stop_after)
    if result.is_main:
        print(f"trained {result.steps}/{result.total_steps} steps in {result.seconds:.0f} s")
        print(f"checkpoint: {result.checkpoint}")
        print(f"metrics:    {result.metrics}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from train.checkpoint import checkpoint_folder
    from train.config import load_train_config
    from train.evaluate import evaluate, format_table

    config = load_train_config(args.config, args.overrides)
    checkpoint = checkpoint_folder(args.checkpoint)
    print(format_table(evaluate(checkpoint, args.data, args.out, config.eval, seed=config.seed,
                                  answer_form=config.data.multiple_choice_answer)))
    return 0


def cmd_lmms_task(args: argparse.Namespace) -> int:
    from train.lmms_task import TASK_NAME, export_task

    path = export_task(args.data, args.out, split=args.split, max_per_category=args.max_per_category)
    print(f"task:  {path}")
    print(f"run:   lmms-eval --model fusion --model_args pretrained=CHECKPOINT --tasks {TASK_NAME} "
          f"--include_path {args.out}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from train.convert import run_convert

    return run_convert(args)


def train_after_synthesis(args: argparse.Namespace, run_config, dataset: Path, synthesis_seconds: float) -> int:
    """`fusion run` after synthesis: train on the shards, evaluate on the held-out split, write the report."""
    from train.run import run_train_config, train_and_evaluate

    config = run_train_config(run_config.train, source=str(args.config))
    outcome = train_and_evaluate(config, dataset, args.out, synthesis_seconds=synthesis_seconds,
                                 progress=run_config.ray.progress)
    if not outcome.checks_passed:
        print("learning check: the trained model did not beat the baselines by the required margin",
              file=sys.stderr)
    return 0
