"""Builds the card: Hugging Face YAML header (configs list the complete shards explicitly) and a body on how
the data was made, what it cost, what was rejected and why, sample rows, loading and reproducing."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml
from huggingface_hub import DatasetCard, DatasetCardData

from pipeline.card.samples import samples_markdown
from pipeline.fileio import atomic_write_text
from pipeline.indexing import load_manifest
from pipeline.inspect.card_section import scores_markdown
from pipeline.layout import OutputLayout
from pipeline.planning import SPLITS

TASK_CATEGORIES = ["visual-question-answering", "image-to-text", "image-text-to-text"]
FUSION_CITATION = """@article{liu2025fusion,
  title   = {FUSION: Fully Integration of Vision-Language Representations for Deep Cross-Modal Understanding},
  author  = {Liu, Zheng and Liu, Mengjie and Chen, Jingzhou and Xu, Jingwei and Cui, Bin and He, Conghui and Zhang, Wentao},
  journal = {arXiv preprint arXiv:2504.09925},
  year    = {2025}
}"""


def write_card(root: Path) -> Path:
    layout = OutputLayout(Path(root))
    card = build_card(layout, load_manifest(layout.root))
    atomic_write_text(layout.card, str(card))
    return layout.card


def build_card(layout: OutputLayout, manifest: dict[str, Any]) -> DatasetCard:
    config = manifest["config"]
    split_counts = _split_counts(manifest)
    categories = sorted(split_counts)
    configs = [{"config_name": "default", "default": True, "data_files": _data_files(manifest, None)}]
    configs += [{"config_name": c, "data_files": _data_files(manifest, c)} for c in categories]
    dataset_info = [_dataset_info("default", _merged_splits(split_counts), manifest, None)]
    dataset_info += [_dataset_info(c, split_counts[c], manifest, c) for c in categories]
    data = DatasetCardData(
        license=config["dataset"]["license"],
        language=config["dataset"]["language"],
        task_categories=TASK_CATEGORIES,
        size_categories=[size_category(manifest["counts"]["accepted"])],
        annotations_creators=["machine-generated"],
        language_creators=["machine-generated"],
        source_datasets=["original"],
        pretty_name=config["dataset"]["pretty_name"],
        tags=config["dataset"]["tags"],
        configs=configs,
        dataset_info=dataset_info,
    )
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{_body(layout, manifest, split_counts)}")


def size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]
    for bound, label in bounds:
        if n < bound:
            return label
    return "n>100M"


def _split_counts(manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for shard in manifest["shards"]:
        per_split = counts.setdefault(shard["category"], {})
        per_split[shard["split"]] = per_split.get(shard["split"], 0) + shard["count"]
    return {c: {s: n for s, n in splits.items() if n} for c, splits in counts.items() if any(splits.values())}


def _merged_splits(split_counts: dict[str, dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for splits in split_counts.values():
        for split, n in splits.items():
            merged[split] = merged.get(split, 0) + n
    return merged


def _ordered(splits: Any) -> list[str]:
    """Splits in the order train, test (then any other), as the Hub lists them."""
    return sorted(splits, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s))


def _data_files(manifest: dict[str, Any], category: str | None) -> list[dict[str, Any]]:
    """Explicit shard lists: a tar whose stats were never written is not complete and must not be loaded."""
    by_split: dict[str, list[str]] = {}
    for shard in manifest["shards"]:
        if category is None or shard["category"] == category:
            by_split.setdefault(shard["split"], []).append(shard["path"])
    return [{"split": split, "path": sorted(by_split[split])} for split in _ordered(by_split)]


def _dataset_info(name: str, splits: dict[str, int], manifest: dict[str, Any], category: str | None) -> dict[str, Any]:
    shards = [s for s in manifest["shards"] if category is None or s["category"] == category]
    return {
        "config_name": name,
        "splits": [{"name": split, "num_examples": splits[split]} for split in _ordered(splits)],
        "download_size": sum(s["bytes"] for s in shards),
    }


def _body(layout: OutputLayout, manifest: dict[str, Any], split_counts: dict[str, dict[str, int]]) -> str:
    config = manifest["config"]
    sections = [
        f"# {config['dataset']['pretty_name']}",
        _summary(manifest, split_counts),
        "## How it was generated\n\n" + _generation(layout, manifest),
        "## Cost per stage\n\n" + _costs(manifest),
        "## Statistics per category\n\n" + _statistics(layout, manifest, split_counts),
        "## Scores and filters\n\n" + scores_markdown(layout.root, manifest),
        "## Samples\n\n" + samples_markdown(layout.root, manifest),
        "## Loading\n\n" + _loading(manifest),
        "## Reproducing\n\n" + _reproducing(manifest),
        "## Citation\n\nThe model this data is made for:\n\n```bibtex\n" + FUSION_CITATION + "\n```",
    ]
    return "\n\n".join(sections) + "\n"


def _summary(manifest: dict[str, Any], split_counts: dict[str, dict[str, int]]) -> str:
    counts = manifest["counts"]
    created = counts["accepted"] + counts["rejected"]
    categories = ", ".join(f"`{c}`" for c in sorted(split_counts))
    status = ""
    if not manifest["complete"]:
        units = manifest["units"]
        status = (f"\n\n**Incomplete:** {units['complete']} of {units['planned']} work units are finished"
                  + (f", {units['failed']} failed (see `failed_units.json`)" if units["failed"] else "") + ".")
    formats = sorted({s.get("image_format", "jpg") for s in manifest["shards"]}) or ["jpg"]
    return (
        f"Synthetic visual question answering data for training FUSION-style multimodal LLMs: "
        f"{counts['accepted']:,} samples kept of {created:,} generated, in {len(split_counts)} task families "
        f"({categories}), as WebDataset shards. Every sample is an RGB image (`{'`/`'.join(formats)}`), its record "
        f"(`json`: LLaVA-style `conversations`, description, scores, provenance) and its description (`txt`).{status}"
    )


def _generation(layout: OutputLayout, manifest: dict[str, Any]) -> str:
    config = manifest["config"]
    provenance = _first_provenance(layout, manifest)
    lines = [
        f"- Run seed `{config['seed']}`; each sample's seed derives from (run seed, category, split, position), so "
        "the same config gives the same dataset. Each category and split wanted a number of accepted samples; "
        f"short ones were topped up with new positions (at most {config['dataset']['max_attempts_factor']:g}x the "
        f"target in all, {manifest['units']['rounds']} round(s) here) and the first accepted by position were kept.",
        f"- Code: `{manifest['git_sha']}`; packages: "
        + ", ".join(f"{name} {version}" for name, version in sorted(manifest["packages"].items())) + ".",
    ]
    for stage_id, facts in sorted(provenance.get("stages", {}).items()):
        details = {k: v for k, v in facts.items() if k not in ("kind",)}
        if details:
            lines.append(f"- `{stage_id}`: " + ", ".join(f"{k} `{v}`" for k, v in sorted(details.items())) + ".")
    table = ["| stage | kind | role | settings | input | rejected | pass rate |", "|---|---|---|---|---|---|---|"]
    params = {s.get("id") or s["name"]: s["params"] for s in config["stages"]}
    for stage in manifest["stages"]:
        settings = ", ".join(f"{k}={v}" for k, v in sorted((params.get(stage["stage"]) or {}).items())) or "defaults"
        rate = 1 - stage["rejected"] / stage["input"] if stage["input"] else 1.0
        table.append(f"| `{stage['stage']}` | `{stage['kind']}` | {stage['role']} | {settings} | {stage['input']:,} | "
                     f"{stage['rejected']:,} | {rate:.1%} |")
    reasons = [f"- `{s['stage']}`: " + ", ".join(f"{r} ({n})" for r, n in sorted(s["reasons"].items()))
               for s in manifest["stages"] if s["reasons"]]
    rejects = ("\n\nRejected samples are kept, with the stage id, the reason and (unless configured otherwise) "
               "the image, in `rejects/<category>/<split>-NNNNN.parquet`")
    rejects += (":\n\n" + "\n".join(reasons)) if reasons else "."
    shortfalls = manifest["counts"]["shortfalls"]
    if shortfalls:
        rejects += "\n\n**Short of target:**\n\n" + "\n".join(
            f"- {name}: {v['accepted']:,} of {v['target']:,} after {v['attempted']:,} attempts; main reasons: "
            + (", ".join(f"{r} ({n})" for r, n in v["main_reject_reasons"].items()) or "none")
            for name, v in sorted(shortfalls.items()))
    return "\n".join(lines) + "\n\nStages, in order:\n\n" + "\n".join(table) + rejects


def _costs(manifest: dict[str, Any]) -> str:
    table = ["| stage | GPUs per worker | busy seconds | GPU-seconds | seconds per accepted sample | "
             "GPU-seconds per accepted sample | cached calls replayed / made |", "|---|---|---|---|---|---|---|"]
    for stage in manifest["stages"]:
        per = stage["seconds_per_accepted"]
        gpu_per = stage["gpu_seconds_per_accepted"]
        cache = stage["cache"]
        table.append(f"| `{stage['stage']}` | {stage['gpus_reserved']:g} | {stage['busy_seconds']:.1f} | "
                     f"{stage['gpu_seconds']:.1f} | {per if per is None else f'{per:.4f}'} | "
                     f"{gpu_per if gpu_per is None else f'{gpu_per:.4f}'} | {cache['hits']:,} / {cache['misses']:,} |")
    return ("Measured while the data was made (busy time of each stage's workers, summed over work units; "
            "GPU-seconds are busy seconds times the GPUs a worker reserves):\n\n" + "\n".join(table))


def _statistics(layout: OutputLayout, manifest: dict[str, Any], split_counts: dict[str, dict[str, int]]) -> str:
    table = ["| category | split | samples | target | rejected | QA turns (mean) | caption words (mean) | "
             "description words (mean) |", "|---|---|---|---|---|---|---|---|"]
    categories = manifest["counts"]["categories"]
    for category in sorted(split_counts):
        for split in _ordered(split_counts[category]):
            turns, caption_words, description_words = [], [], []
            for shard in manifest["shards"]:
                if (shard["category"], shard["split"]) != (category, split):
                    continue
                rows = pq.read_table(layout.root / shard["parquet"], columns=["conversations", "caption", "description"])
                for row in rows.to_pylist():
                    turns.append(len(json.loads(row["conversations"])) // 2)
                    caption_words.append(len(row["caption"].split()))
                    description_words.append(len(row["description"].split()))
            counts = categories[category][split]
            table.append(
                f"| {category} | {split} | {split_counts[category][split]:,} | {counts['target']:,} | "
                f"{counts['rejected']:,} | {_mean(turns)} | {_mean(caption_words)} | {_mean(description_words)} |"
            )
    return "\n".join(table)


def _mean(values: list[int]) -> str:
    return f"{statistics.fmean(values):.1f}" if values else "-"


def _first_provenance(layout: OutputLayout, manifest: dict[str, Any]) -> dict[str, Any]:
    for shard in manifest["shards"]:
        row = pq.read_table(layout.root / shard["parquet"], columns=["provenance"]).slice(0, 1).to_pylist()
        if row:
            return json.loads(row[0]["provenance"])
    return {}


def _loading(manifest: dict[str, Any]) -> str:
    if not manifest["shards"]:
        return "No shard has been written yet."
    example = next((s for s in manifest["shards"] if s["split"] == "train"), manifest["shards"][0])
    category, split = example["category"], example["split"]
    last = max(int(Path(s["path"]).stem.split("-")[-1]) for s in manifest["shards"]
               if (s["category"], s["split"]) == (category, split))
    shards = f"data/{category}/{split}-{{00000..{last:05d}}}.tar"
    image = example.get("image_format", "jpg")
    return f"""With `webdataset` (no code of this project needed):

```python
import webdataset as wds

dataset = (
    wds.WebDataset("{shards}", shardshuffle=100)
    .decode("pil")
    .to_tuple("{image}", "json")
)
image, record = next(iter(dataset))
print(record["conversations"])
```

With Hugging Face `datasets`:

```python
from datasets import load_dataset

dataset = load_dataset("webdataset", data_files={{"train": "data/*/train-*.tar", "test": "data/*/test-*.tar"}})
# or, from the Hub, one task family: load_dataset("<repo-id>", "{category}")
```

The JSON member has one schema for the whole dataset: `scores` is a list of `{{"name", "value"}}` pairs named
`<stage id>/<metric>`, and `provenance` and `metadata` are JSON strings. `sizes.json` (root) and
`data/<category>/sizes.json` give the samples per shard (open_clip reads the latter);
`data/<category>/<split>-NNNNN.parquet` holds every record without images, with one `score/<name>` column per
score name of the dataset (null where a sample has none), so thresholds can be chosen at training time without
opening the tars."""


def _reproducing(manifest: dict[str, Any]) -> str:
    config_yaml = yaml.safe_dump(manifest["config"], sort_keys=False)
    return (
        "With the code at the commit above, save this config as `config.yaml` (it is also in this folder) and run:\n\n"
        "```bash\nfusion synth --config config.yaml --out OUT\n```\n\n"
        "On a Ray cluster: `ray job submit --working-dir . -- python -m jobs.synthesize --config config.yaml --out OUT`.\n\n"
        f"```yaml\n{config_yaml}```"
    )
