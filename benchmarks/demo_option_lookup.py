"""Can a trained demo model pick the option that matches an answer? Multiple choice with the image and with the
scene's description written before the questions instead (no image), on the held-out split, per question type.

A model that reads the option letters off its own answer scores above chance in the text form wherever the
description states the answer (background pattern, shapes in total, colour of a shape, ...); one at chance there
has not learned the lookup, whatever it sees in the image.

Run: python benchmarks/demo_option_lookup.py outputs/demo/train [OTHER_RUN ...] [--data outputs/demo/dataset]
(a training run folder means its newest checkpoint; about 30 s per checkpoint)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.fusion import FusionModel  # noqa: E402
from pipeline.record import SampleRecord  # noqa: E402
from train.checkpoint import checkpoint_folder  # noqa: E402
from train.config import EvalSection, SourceSpec  # noqa: E402
from train.evaluate import EvalItem, add_baselines, generate_answers, held_out_items  # noqa: E402
from train.loader import shard_samples, with_context, without_image_token  # noqa: E402
from train.sources import list_shards  # noqa: E402

CATEGORY = "SynthMultiChoice"


def descriptions(dataset: str) -> dict[str, str]:
    found = {}
    for shard in list_shards(SourceSpec(path=dataset, split="test", categories=[CATEGORY])):
        for _, raw in shard_samples(shard, Counter()):
            record = SampleRecord.from_json_dict(json.loads(raw["json"]))
            found[record.key] = record.description
    return found


def as_text(item: EvalItem, description: str) -> EvalItem:
    return dataclasses.replace(item, prompt=with_context(without_image_token(item.prompt), description), image=None)


def accuracy(items: list[EvalItem]) -> tuple[float, dict[str, float]]:
    by_type = defaultdict(list)
    for item in items:
        by_type[item.question_type].append(item.score)
    return (sum(i.score for i in items) / len(items), {t: sum(s) / len(s) for t, s in sorted(by_type.items())})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="outputs/demo/dataset", help="a demo dataset folder with a test split")
    parser.add_argument("runs", nargs="+", help="training run folders or checkpoints")
    args = parser.parse_args()

    with_image = [i for i in held_out_items(args.data, "test", None) if i.category == CATEGORY]
    add_baselines(with_image)
    texts = descriptions(args.data)
    forms = {"image": with_image, "description": [as_text(i, texts[i.key]) for i in with_image]}
    types = sorted({i.question_type for i in with_image})
    chance = {t: sum(i.chance for i in with_image if i.question_type == t) /
              sum(1 for i in with_image if i.question_type == t) for t in types}
    print(f"{'run / form':<48}{'all':>7}" + "".join(f"{t[:12]:>13}" for t in types))
    print(f"{'chance':<48}{sum(i.chance for i in with_image) / len(with_image):>7.1%}"
          + "".join(f"{chance[t]:>13.1%}" for t in types))
    for run in args.runs:
        checkpoint = checkpoint_folder(run)
        model = FusionModel.from_pretrained(checkpoint)
        for form, items in forms.items():
            generate_answers(model, items, EvalSection(batch_size=64, max_new_tokens_short=4), progress=False)
            overall, per_type = accuracy(items)
            print(f"{f'{checkpoint.parent.parent.name}/{checkpoint.name} {form}'[-48:]:<48}{overall:>7.1%}"
                  + "".join(f"{per_type[t]:>13.1%}" for t in types))


if __name__ == "__main__":
    main()
