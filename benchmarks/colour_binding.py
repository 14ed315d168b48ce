"""Does a trained demo model bind a colour to the shape a question names, or only name the image's colours?

For every short "What colour is the X?" of a `fusion run` folder's evaluation (OUT/eval/predictions.jsonl), beside
the scene graph of its held-out image (OUT/dataset): how often the answer is right, how often it names a colour
of some shape in the image, and how often a colour drawn at random among the image's shape colours would be right.
A model that sees the colours but does not bind them names a colour of the image almost always, yet is right no
more often than that random draw; a model that binds beats it.

The same for the multiple-choice form ("What colour is the X?" with four lettered options, answered "green: B"):
how often the option text written is right, how often it is a colour of the image, how often a random option among
those the image shows would be right, and the cloze (each option's text scored as the answer without the options,
`train/evaluate.py`). A model that reads the image as well with the options before it as without them writes a
colour of the image as often in both forms.

Run: python benchmarks/colour_binding.py outputs/demo [OTHER_RUN ...]  (a few seconds; no model is loaded)
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.record import SampleRecord  # noqa: E402
from train.config import SourceSpec  # noqa: E402
from train.evaluate import PREDICTIONS_FILE  # noqa: E402
from train.loader import shard_samples  # noqa: E402
from train.run import DATASET_DIR, EVAL_DIR  # noqa: E402
from train.scoring import MULTIPLE_CHOICE, SHORT, normalize_answer, written_option  # noqa: E402
from train.sources import list_shards  # noqa: E402

QUESTION_TYPE = "color_of_shape"


def shape_colours(dataset: Path, split: str) -> dict[str, set[str]]:
    """Each held-out sample's key -> the colours of the shapes in its scene graph."""
    colours: dict[str, set[str]] = {}
    for shard in list_shards(SourceSpec(path=str(dataset), split=split)):
        for _, raw in shard_samples(shard, Counter()):
            record = SampleRecord.from_json_dict(json.loads(raw["json"]))
            scenes = record.metadata.get("scenes") if isinstance(record.metadata, dict) else None
            if scenes:
                colours[record.key] = {o["color"] for s in scenes for o in s["objects"] if o["kind"] == "shape"}
    return colours


def binding_rows(run: Path, split: str) -> dict[str, dict[str, float]]:
    """Per answer form ("short", "multiple choice"): the questions, and the shares right, naming a colour of the
    image and right for a random colour of the image (among the options, for multiple choice); multiple choice
    also its cloze share."""
    colours = shape_colours(run / DATASET_DIR, split)
    sums: dict[str, Counter] = {"short": Counter(), "multiple choice": Counter()}
    for line in (run / EVAL_DIR / PREDICTIONS_FILE).read_text().splitlines():
        item = json.loads(line)
        in_image = colours.get(item["key"])
        if item["question_type"] != QUESTION_TYPE or not in_image:
            continue
        if item["kind"] == SHORT:
            row, written, choices = sums["short"], normalize_answer(item["prediction"]), in_image
            row["right"] += item["score"]
        elif item["kind"] == MULTIPLE_CHOICE:
            options = [normalize_answer(option) for option in item["options"]]
            option = written_option(item["prediction"], item["options"])
            row, written = sums["multiple choice"], None if option is None else options[option[0]]
            choices = in_image.intersection(options)  # the right option is a colour of the image
            row["right"] += option is not None and string.ascii_uppercase[option[0]] == item["reference"]
            row["cloze"] += item["cloze_score"] or 0.0
        else:
            continue
        row["questions"] += 1
        row["present"] += written in in_image
        row["random"] += 1 / len(choices)
    if not sums["short"]["questions"]:
        raise SystemExit(f"{run}: no short {QUESTION_TYPE} question with a scene graph in its predictions")
    return {form: {name: value / (1 if name == "questions" else row["questions"]) for name, value in row.items()}
            for form, row in sums.items() if row["questions"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="`fusion run` output folders (OUT of `make run`)")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    print(f"'{QUESTION_TYPE}' questions: the answer (the option text written, for multiple choice) right, naming a "
          "colour of the image, and a random colour of the image (among the options) right")
    print(f"{'run':40s} {'form':16s} {'questions':>9s} {'right':>7s} {'names a colour of the image':>28s} "
          f"{'random colour of it':>20s} {'cloze':>7s}")
    for run in args.runs:
        for form, row in binding_rows(run, args.split).items():
            cloze = f"{row['cloze']:7.1%}" if "cloze" in row else f"{'':7s}"
            print(f"{run!s:40s} {form:16s} {row['questions']:9.0f} {row['right']:7.1%} {row['present']:28.1%} "
                  f"{row['random']:20.1%} {cloze}")


if __name__ == "__main__":
    main()
