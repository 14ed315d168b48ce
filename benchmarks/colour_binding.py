"""Does a trained demo model bind a colour to the shape a question names, or only name the image's colours?

For every short "What colour is the X?" of a `fusion run` folder's evaluation (OUT/eval/predictions.jsonl), beside
the scene graph of its held-out image (OUT/dataset): how often the answer is right, how often it names a colour
of some shape in the image, and how often a colour drawn at random among the image's shape colours would be right.
A model that sees the colours but does not bind them names a colour of the image almost always, yet is right no
more often than that random draw; a model that binds beats it.

Run: python benchmarks/colour_binding.py outputs/demo [OTHER_RUN ...]  (a few seconds; no model is loaded)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.record import SampleRecord  # noqa: E402
from train.config import SourceSpec  # noqa: E402
from train.evaluate import PREDICTIONS_FILE  # noqa: E402
from train.loader import shard_samples  # noqa: E402
from train.run import DATASET_DIR, EVAL_DIR  # noqa: E402
from train.scoring import SHORT, normalize_answer  # noqa: E402
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


def binding_row(run: Path, split: str) -> dict[str, float]:
    colours = shape_colours(run / DATASET_DIR, split)
    right = present = random_draw = count = 0.0
    for line in (run / EVAL_DIR / PREDICTIONS_FILE).read_text().splitlines():
        item = json.loads(line)
        in_image = colours.get(item["key"])
        if item["question_type"] != QUESTION_TYPE or item["kind"] != SHORT or not in_image:
            continue
        count += 1
        right += item["score"]
        present += normalize_answer(item["prediction"]) in in_image
        random_draw += 1 / len(in_image)
    if not count:
        raise SystemExit(f"{run}: no short {QUESTION_TYPE} question with a scene graph in its predictions")
    return {"questions": count, "right": right / count, "present": present / count, "random": random_draw / count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="`fusion run` output folders (OUT of `make run`)")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    print(f"short '{QUESTION_TYPE}' questions: right, naming a colour of the image, and a random colour of the image")
    print(f"{'run':40s} {'questions':>9s} {'right':>7s} {'names a colour of the image':>28s} {'random colour of it':>20s}")
    for run in args.runs:
        row = binding_row(run, args.split)
        print(f"{run!s:40s} {row['questions']:9.0f} {row['right']:7.1%} {row['present']:28.1%} {row['random']:20.1%}")


if __name__ == "__main__":
    main()
