"""`fusion convert`: real image-text data into the same shard contract as the synthetic data.

Two inputs:
  * llava: a LLaVA-style JSON or JSONL list (`{"id", "image": "sub/x.jpg", "conversations": [...]}`, the format of
    LLaVA-Pretrain, ShareGPT4V and the paper's other sources) with its image folder. Entries without `image` are
    text-only (OpenOrca-style) and go to the category `<name>_text`, since every sample of a tar must have the
    same members.
  * hf: a Hugging Face dataset folder (`save_to_disk`, or parquet / arrow files) with an image column and either a
    `conversations` column or a caption column (turned into a one-turn captioning conversation).

Each converted source becomes one category of the output folder (re-converting a category replaces it); the
folder gets `manifest.json` and `sizes.json` like a synthesized dataset, so `fusion train --data OUT` and mixture
configs read it the same way. Images are stored as JPEG (JPEG inputs are copied byte for byte). Unreadable images
and malformed entries are skipped and counted.

Shards are written by the pipeline's writer for ready members (`write_shard` below is the one place that calls
it); text-only samples get `KEY.json` + `KEY.txt` in their own category.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from pipeline.record import SampleRecord
from pipeline.fileio import atomic_write_text

logger = logging.getLogger(__name__)

CATEGORY_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")
TEXT_ONLY_SUFFIX = "_text"
DEFAULT_CAPTION_PROMPT = "Describe the image briefly."


class ConvertError(ValueError):
    """Input that cannot be converted; the message names the file or entry."""


# --- the writer boundary --------------------------------------------------------------------------------------

def write_shard(root: Path, category: str, split: str, index: int,
                samples: list[tuple[SampleRecord, bytes | None]]) -> dict[str, Any]:
    """Write one shard with the pipeline's shard writer, images as given (JPEG inputs stay byte for byte);
    text-only samples (no image) get `KEY.json` + `KEY.txt`. Returns its manifest entry."""
    from pipeline.layout import OutputLayout
    from pipeline.shard_writer import write_ready_shard

    ready = []
    for record, image in samples:
        record.status = "accepted"
        members = {"txt": record.text().encode("utf-8")}
        if image is not None:
            members["jpg"] = image
        ready.append((record.to_json_dict(), members))
    stats = write_ready_shard(OutputLayout(root), category, split, index, ready)
    return {k: stats[k] for k in ("path", "category", "split", "count", "rejected", "sha256", "bytes", "parquet",
                                  "parquet_sha256", "image_format")}


def write_index(root: Path, entries: list[dict[str, Any]], source: dict[str, Any]) -> dict[str, Any]:
    """Merge `entries` into `manifest.json` (replacing their categories) and rewrite every `sizes.json`."""
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"shards": [], "sources": {}}
    replaced = {entry["category"] for entry in entries}
    shards = [s for s in manifest["shards"] if s["category"] not in replaced] + entries
    shards.sort(key=lambda s: s["path"])
    manifest.update(complete=True, shards=shards, counts={"accepted": sum(s["count"] for s in shards), "rejected": 0})
    manifest.setdefault("sources", {}).update({category: source for category in replaced})
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    atomic_write_text(root / "sizes.json", json.dumps({s["path"]: s["count"] for s in shards}, indent=2))
    for category in {s["category"] for s in shards}:
        sizes = {Path(s["path"]).name: s["count"] for s in shards if s["category"] == category}
        atomic_write_text(root / "data" / category / "sizes.json", json.dumps(sizes, indent=2))
    return manifest


# --- reading inputs --------------------------------------------------------------------------------------------

def read_llava_entries(path: Path) -> Iterator[dict[str, Any]]:
    text = path.read_text()
    if path.suffix == ".jsonl" or not text.lstrip().startswith("["):
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as error:
                    raise ConvertError(f"{path}:{number}: not JSON: {error}") from None
        return
    try:
        entries = json.loads(text)
    except ValueError as error:
        raise ConvertError(f"{path}: not JSON: {error}") from None
    yield from entries


def jpeg_bytes(data: bytes, quality: int) -> bytes:
    """JPEG bytes of an image file: JPEG RGB files unchanged, anything else decoded and re-encoded."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.format == "JPEG" and image.mode == "RGB":
            return data
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()


def key_prefix(category: str, split: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", f"{category.lower()}_{split}")


def llava_records(entries: Iterable[dict[str, Any]], images: Path | None, category: str, split: str,
                  quality: int, counts: Counter) -> Iterator[tuple[SampleRecord, bytes | None]]:
    """(record, JPEG bytes or None for text-only) per usable entry; unusable ones are counted by reason."""
    prefix = key_prefix(category, split)
    for index, entry in enumerate(entries):
        conversations = entry.get("conversations")
        if not isinstance(conversations, list) or len(conversations) < 2:
            counts["no_conversation"] += 1
            continue
        image_name = entry.get("image")
        image = None
        if image_name:
            if images is None:
                raise ConvertError("entries name images: give the image folder with --images")
            try:
                image = jpeg_bytes((images / image_name).read_bytes(), quality)
            except (OSError, ValueError) as error:
                counts["unreadable_image"] += 1
                logger.warning("entry %s: image %s skipped: %s", entry.get("id", index), image_name, error)
                continue
        turns = [{"from": str(t.get("from")), "value": str(t.get("value", ""))} for t in conversations]
        if image is not None and "<image>" not in turns[0]["value"]:
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
        answer = next((t["value"] for t in turns if t["from"] == "gpt"), "")
        record = SampleRecord(
            key=f"{prefix}_{index:08d}", category=category if image is not None else category + TEXT_ONLY_SUFFIX,
            split=split, seed=0, caption=answer, conversations=turns,
            metadata={"source_id": str(entry.get("id", index)), "image": image_name or ""},
            provenance={"converted_from": "llava-json"},
        )
        yield record, image


def hf_records(dataset_dir: Path, category: str, split: str, image_column: str, text_column: str | None,
               prompt: str, quality: int, counts: Counter) -> Iterator[tuple[SampleRecord, bytes | None]]:
    dataset = _load_hf_dataset(dataset_dir, split)
    if image_column not in dataset.column_names:
        raise ConvertError(f"{dataset_dir}: no image column {image_column!r} (columns: {dataset.column_names})")
    has_conversations = "conversations" in dataset.column_names
    if not has_conversations:
        text_column = text_column or next((c for c in ("caption", "text", "description") if c in dataset.column_names),
                                          None)
        if text_column is None or text_column not in dataset.column_names:
            raise ConvertError(f"{dataset_dir}: give --text-column (columns: {dataset.column_names})")
    prefix = key_prefix(category, split)
    for index, row in enumerate(dataset):
        try:
            image = _image_bytes(row[image_column], quality)
        except (OSError, ValueError, TypeError) as error:
            counts["unreadable_image"] += 1
            logger.warning("row %d: image skipped: %s", index, error)
            continue
        if has_conversations:
            turns = [{"from": t["from"], "value": t["value"]} for t in row["conversations"]]
            if "<image>" not in turns[0]["value"]:
                turns[0]["value"] = "<image>\n" + turns[0]["value"]
        else:
            turns = [{"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": str(row[text_column])}]
        record = SampleRecord(key=f"{prefix}_{index:08d}", category=category, split=split, seed=0,
                              caption=turns[1]["value"], conversations=turns,
                              metadata={"source_row": index}, provenance={"converted_from": "huggingface-dataset"})
        yield record, image


def _load_hf_dataset(directory: Path, split: str):
    import datasets

    if (directory / "dataset_info.json").is_file() or (directory / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(directory))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ConvertError(f"{directory}: no split {split!r} (splits: {list(loaded)})")
            return loaded[split]
        return loaded
    files = sorted(str(p) for p in directory.rglob("*.parquet"))
    if not files:
        raise ConvertError(f"{directory}: neither a save_to_disk folder nor parquet files")
    return datasets.load_dataset("parquet", data_files=files, split="train")


def _image_bytes(value: Any, quality: int) -> bytes:
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.convert("RGB").save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()
    if isinstance(value, dict) and value.get("bytes"):
        return jpeg_bytes(value["bytes"], quality)
    if isinstance(value, dict) and value.get("path"):
        return jpeg_bytes(Path(value["path"]).read_bytes(), quality)
    raise ValueError(f"unsupported image value of type {type(value).__name__}")


# --- conversion ------------------------------------------------------------------------------------------------

def convert(records: Iterable[tuple[SampleRecord, bytes | None]], out: Path, category: str, split: str,
            shard_size: int, source: dict[str, Any], counts: Counter, progress: bool = True) -> dict[str, Any]:
    if not CATEGORY_PATTERN.match(category):
        raise ConvertError(f"--name {category!r}: a category is letters, digits and underscores")
    buffers: dict[bool, list[tuple[SampleRecord, bytes | None]]] = {True: [], False: []}
    indices: Counter = Counter()
    entries: list[dict[str, Any]] = []

    def flush(has_image: bool) -> None:
        batch = buffers[has_image]
        if not batch:
            return
        name = category if has_image else category + TEXT_ONLY_SUFFIX
        entries.append(write_shard(out, name, split, indices[has_image], batch))
        indices[has_image] += 1
        buffers[has_image] = []

    bar = tqdm(desc=f"convert {category}", unit="sample", disable=not progress)
    for record, image in records:
        has_image = image is not None
        buffers[has_image].append((record, image))
        counts["converted"] += 1
        bar.update()
        if len(buffers[has_image]) >= shard_size:
            flush(has_image)
    flush(True)
    flush(False)
    bar.close()
    if not entries:
        raise ConvertError(f"nothing to convert for {category}: {dict(counts)}")
    return write_index(out, entries, {**source, "counts": dict(counts)})


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["llava", "hf"], help="llava: JSON + image folder; hf: a datasets folder")
    parser.add_argument("--input", required=True, type=Path, help="the LLaVA JSON/JSONL file, or the dataset folder")
    parser.add_argument("--images", type=Path, default=None, help="image folder of a LLaVA JSON")
    parser.add_argument("--out", required=True, type=Path, help="output dataset folder (categories are merged in)")
    parser.add_argument("--name", required=True, help="category name of this source, e.g. LLaVAPretrain")
    parser.add_argument("--split", default="train")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--jpeg-quality", type=int, default=95, help="for inputs that are not JPEG already")
    parser.add_argument("--image-column", default="image", help="hf: the image column")
    parser.add_argument("--text-column", default=None, help="hf: the caption column (default caption/text)")
    parser.add_argument("--prompt", default=DEFAULT_CAPTION_PROMPT, help="hf: the question for caption rows")


def run_convert(args: argparse.Namespace) -> int:
    counts: Counter = Counter()
    if args.format == "llava":
        records = llava_records(read_llava_entries(args.input), args.images, args.name, args.split,
                                args.jpeg_quality, counts)
    else:
        records = hf_records(args.input, args.name, args.split, args.image_column, args.text_column, args.prompt,
                             args.jpeg_quality, counts)
    source = {"format": args.format, "input": str(args.input), "split": args.split}
    manifest = convert(records, args.out, args.name, args.split, args.shard_size, source, counts)
    written = [s for s in manifest["shards"] if s["category"] in (args.name, args.name + TEXT_ONLY_SUFFIX)]
    print(f"converted {sum(s['count'] for s in written):,} samples of {args.name} into {len(written)} shards "
          f"under {args.out} (skipped: {({k: v for k, v in counts.items() if k != 'converted'}) or 'none'})")
    return 0
