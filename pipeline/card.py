"""The dataset card (``README.md``): Hugging Face YAML header plus a body describing how the data was made.

Written from what is on disk (manifest, config, shards), so ``fusion card DIR`` can always rewrite it.
"""

from __future__ import annotations

import json
import statistics
import tarfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml
from huggingface_hub import DatasetCard, DatasetCardData

from pipeline.fileio import atomic_write_bytes, atomic_write_text
from pipeline.images import decode_image
from pipeline.manifest import load_manifest
from pipeline.shards import OutputLayout
from pipeline.stage import STAGES, Filter
from pipeline.units import SPLITS

SAMPLES_DIR = "samples"
SAMPLES_PER_CATEGORY = 1
REQUIRED_YAML_FIELDS = (
    "license", "task_categories", "language", "size_categories", "annotations_creators", "pretty_name", "tags",
    "configs", "dataset_info",
)
TASK_CATEGORIES = ["visual-question-answering", "image-to-text", "image-text-to-text"]
FUSION_CITATION = """@article{liu2025fusion,
  title   = {FUSION: Fully Integration of Vision-Language Representations for Deep Cross-Modal Understanding},
  author  = {Liu, Zheng and Liu, Mengjie and Chen, Jingzhou and Xu, Jingwei and Cui, Bin and He, Conghui and Zhang, Wentao},
  journal = {arXiv preprint arXiv:2504.09925},
  year    = {2025}
}"""


def write_card(root: Path) -> Path:
    layout = OutputLayout(Path(root))
    manifest = load_manifest(layout.root)
    card = build_card(layout, manifest)
    atomic_write_text(layout.card, str(card))
    return layout.card


def build_card(layout: OutputLayout, manifest: dict[str, Any]) -> DatasetCard:
    config = manifest["config"]
    split_counts = _split_counts(manifest)
    categories = sorted(split_counts)
    total = manifest["counts"]["accepted"]

    configs = [{"config_name": "default", "default": True, "data_files": _data_files("*", split_counts, merged=True)}]
    configs += [{"config_name": c, "data_files": _data_files(c, split_counts)} for c in categories]
    dataset_info = [_dataset_info("default", _merged_splits(split_counts), manifest, None)]
    dataset_info += [_dataset_info(c, split_counts[c], manifest, c) for c in categories]

    data = DatasetCardData(
        license=config["dataset"]["license"],
        language=config["dataset"]["language"],
        task_categories=TASK_CATEGORIES,
        size_categories=[size_category(total)],
        annotations_creators=["machine-generated"],
        language_creators=["machine-generated"],
        source_datasets=["original"],
        pretty_name=config["dataset"]["pretty_name"],
        tags=config["dataset"]["tags"],
        configs=configs,
        dataset_info=dataset_info,
    )
    body = _body(layout, manifest, split_counts)
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]
    for bound, label in bounds:
        if n < bound:
            return label
    return "n>100M"


def validate_card(root: Path) -> list[str]:
    """Offline checks of the card against the files: the problems found (empty when the card is sound)."""
    layout = OutputLayout(Path(root))
    if not layout.card.is_file():
        return [f"{layout.card} is missing"]
    card = DatasetCard.load(layout.card)
    data = card.data.to_dict()
    problems = [f"YAML header lacks {field!r}" for field in REQUIRED_YAML_FIELDS if not data.get(field)]
    if "machine-generated" not in (data.get("annotations_creators") or []):
        problems.append("annotations_creators must include 'machine-generated'")
    sizes = json.loads(layout.sizes.read_text()) if layout.sizes.is_file() else {}
    for entry in data.get("configs") or []:
        for files in entry.get("data_files", []):
            matched = sorted(layout.root.glob(files["path"]))
            if not matched:
                problems.append(f"config {entry['config_name']!r} split {files['split']!r}: {files['path']} matches no file")
            counted = sum(sizes.get(str(p.relative_to(layout.root)), 0) for p in matched)
            declared = _declared_count(data, entry["config_name"], files["split"])
            if declared != counted:
                problems.append(
                    f"config {entry['config_name']!r} split {files['split']!r}: dataset_info says {declared}, "
                    f"sizes.json says {counted}"
                )
    for image in _referenced_images(card.text):
        if not (layout.root / image).is_file():
            problems.append(f"card shows {image}, which is missing")
    return problems


def _declared_count(data: dict[str, Any], config_name: str, split: str) -> int | None:
    for info in data.get("dataset_info") or []:
        if info.get("config_name") == config_name:
            for entry in info.get("splits", []):
                if entry["name"] == split:
                    return entry["num_examples"]
    return None


def _referenced_images(text: str) -> list[str]:
    return [line.split("](", 1)[1].split(")", 1)[0] for line in text.splitlines() if line.startswith("![")]


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


def _data_files(category: str, split_counts: dict[str, dict[str, int]], merged: bool = False) -> list[dict[str, str]]:
    splits = _merged_splits(split_counts) if merged else split_counts[category]
    return [{"split": split, "path": f"data/{category}/{split}-*.tar"} for split in _ordered(splits)]


def _ordered(splits: dict[str, int]) -> list[str]:
    """Splits in the order train, test (then any other), as the Hub lists them."""
    return sorted(splits, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s))


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
        "## Statistics per category\n\n" + _statistics(layout, manifest, split_counts),
        "## Samples\n\n" + _samples(layout, split_counts),
        "## Loading\n\n" + _loading(manifest),
        "## Reproducing\n\n" + _reproducing(manifest),
        "## Citation\n\nThe model this data is made for:\n\n```bibtex\n" + FUSION_CITATION + "\n```",
    ]
    return "\n\n".join(sections) + "\n"


def _summary(manifest: dict[str, Any], split_counts: dict[str, dict[str, int]]) -> str:
    counts = manifest["counts"]
    created = counts["accepted"] + counts["rejected"]
    categories = ", ".join(f"`{c}`" for c in sorted(split_counts))
    status = "" if manifest["complete"] else (
        f"\n\n**Incomplete:** {manifest['units']['complete']} of {manifest['units']['planned']} shards are written."
    )
    return (
        f"Synthetic visual question answering data for training FUSION-style multimodal LLMs: "
        f"{counts['accepted']:,} samples kept of {created:,} generated, in {len(split_counts)} task families "
        f"({categories}), as WebDataset shards. Every sample is an RGB image (`jpg`), its record (`json`: "
        f"LLaVA-style `conversations`, description, scores, provenance) and its description (`txt`).{status}"
    )


def _generation(layout: OutputLayout, manifest: dict[str, Any]) -> str:
    config = manifest["config"]
    provenance = _first_record(layout, manifest).get("provenance", {})
    lines = [
        f"- Run seed `{config['seed']}`; each shard's seed derives from (run seed, category, split, shard index) and "
        "each sample's from its shard seed and position, so the same config gives the same dataset.",
        f"- Code: `{manifest['git_sha']}`; packages: "
        + ", ".join(f"{name} {version}" for name, version in sorted(manifest["packages"].items())) + ".",
    ]
    models = {k: v for k, v in provenance.items() if k not in ("engine", "git_sha")}
    if models:
        lines.append("- Generator provenance: " + ", ".join(f"{k} `{v}`" for k, v in sorted(models.items())) + ".")
    table = ["| stage | role | settings | input | rejected | pass rate |", "|---|---|---|---|---|---|"]
    stage_params = {s["name"]: s["params"] for s in config["stages"]}
    for stage in manifest["counts"]["stages"]:
        role = "filter" if issubclass(STAGES.get(stage["stage"]), Filter) else "generator"
        params = stage_params.get(stage["stage"]) or {}
        settings = ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "defaults"
        rate = 1 - stage["rejected"] / stage["input"] if stage["input"] else 1.0
        table.append(f"| `{stage['stage']}` | {role} | {settings} | {stage['input']:,} | {stage['rejected']:,} | {rate:.1%} |")
    reasons = [f"- `{s['stage']}`: " + ", ".join(f"{r} ({n})" for r, n in sorted(s["reasons"].items()))
               for s in manifest["counts"]["stages"] if s["reasons"]]
    rejects = "\n\nRejected samples are kept, with the stage and reason, in `rejects/<category>/<split>-NNNNN.parquet`"
    rejects += (":\n\n" + "\n".join(reasons)) if reasons else "."
    return "\n".join(lines) + "\n\nStages, in order:\n\n" + "\n".join(table) + rejects


def _statistics(layout: OutputLayout, manifest: dict[str, Any], split_counts: dict[str, dict[str, int]]) -> str:
    table = ["| category | split | samples | rejected | QA turns (mean) | caption words (mean) | description words (mean) |",
             "|---|---|---|---|---|---|---|"]
    rejected = manifest["counts"]["categories"]
    for category in sorted(split_counts):
        for split in _ordered(split_counts[category]):
            turns, caption_words, description_words = [], [], []
            for shard in manifest["shards"]:
                if (shard["category"], shard["split"]) != (category, split) or not shard["count"]:
                    continue
                table_ = pq.read_table(layout.root / shard["parquet"], columns=["conversations", "caption", "description"])
                for row in table_.to_pylist():
                    turns.append(len(json.loads(row["conversations"])) // 2)
                    caption_words.append(len(row["caption"].split()))
                    description_words.append(len(row["description"].split()))
            table.append(
                f"| {category} | {split} | {split_counts[category][split]:,} | "
                f"{rejected[category][split]['rejected']:,} | {_mean(turns)} | {_mean(caption_words)} | {_mean(description_words)} |"
            )
    return "\n".join(table)


def _mean(values: list[int]) -> str:
    return f"{statistics.fmean(values):.1f}" if values else "-"


def _samples(layout: OutputLayout, split_counts: dict[str, dict[str, int]]) -> str:
    blocks = []
    for category in sorted(split_counts):
        split = "train" if "train" in split_counts[category] else sorted(split_counts[category])[0]
        for record, image in _read_samples(layout.root / "data" / category, split, SAMPLES_PER_CATEGORY):
            name = f"{SAMPLES_DIR}/{record['key']}.jpg"
            atomic_write_bytes(layout.root / name, image)
            width, height = decode_image(image).size
            turns = "\n>\n".join(
                f"> **{'User' if t['from'] == 'human' else 'Assistant'}:** {_quote(t['value'])}"
                for t in record["conversations"]
            )
            blocks.append(f"### {category} (`{record['key']}`, {width}x{height})\n\n![{record['key']}]({name})\n\n{turns}")
    return "\n\n".join(blocks)


def _quote(text: str) -> str:
    return text.replace("<image>\n", "").replace("\n", "<br>")


def _read_samples(category_dir: Path, split: str, limit: int) -> list[tuple[dict[str, Any], bytes]]:
    shards = sorted(category_dir.glob(f"{split}-*.tar"))
    samples = []
    if not shards:
        return samples
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shards[0]) as tar:
        for member in tar:
            key, _, extension = member.name.partition(".")
            members.setdefault(key, {})[extension] = tar.extractfile(member).read()
            if len(members) > limit:
                break
    for key in list(members)[:limit]:
        if {"json", "jpg"} <= set(members[key]):
            samples.append((json.loads(members[key]["json"]), members[key]["jpg"]))
    return samples


def _first_record(layout: OutputLayout, manifest: dict[str, Any]) -> dict[str, Any]:
    for shard in manifest["shards"]:
        if shard["count"]:
            row = pq.read_table(layout.root / shard["parquet"], columns=["provenance"]).slice(0, 1).to_pylist()
            return {"provenance": json.loads(row[0]["provenance"])}
    return {}


def _loading(manifest: dict[str, Any]) -> str:
    if not manifest["shards"]:
        return "No shard has been written yet."
    example = next((s for s in manifest["shards"] if s["split"] == "train"), manifest["shards"][0])
    category, split = example["category"], example["split"]
    last = max(int(Path(s["path"]).stem.split("-")[-1]) for s in manifest["shards"]
               if (s["category"], s["split"]) == (category, split))
    shards = f"data/{category}/{split}-{{00000..{last:05d}}}.tar"
    return f"""With `webdataset` (no code of this project needed):

```python
import webdataset as wds

dataset = (
    wds.WebDataset("{shards}", shardshuffle=100)
    .decode("pil")
    .to_tuple("jpg", "json")
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

`sizes.json` (root) and `data/<category>/sizes.json` give the samples per shard (open_clip reads the latter);
`data/<category>/<split>-NNNNN.parquet` holds every record without images, with one `score/<name>` column per
score, so thresholds can be chosen at training time without opening the tars."""


def _reproducing(manifest: dict[str, Any]) -> str:
    config_yaml = yaml.safe_dump(manifest["config"], sort_keys=False)
    return (
        "With the code at the commit above, save this config as `config.yaml` (it is also in this folder) and run:\n\n"
        "```bash\nfusion synth --config config.yaml --out OUT\n```\n\n"
        "On a Ray cluster: `ray job submit --working-dir . -- python -m jobs.synthesize --config config.yaml --out OUT`.\n\n"
        f"```yaml\n{config_yaml}```"
    )
