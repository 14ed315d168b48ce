"""The sample rows a card shows: read from complete shards only (those the manifest lists)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

from pipeline.fileio import atomic_write_bytes
from pipeline.images import IMAGE_FORMATS, decode_image

SAMPLES_DIR = "samples"


def read_samples(root: Path, shard_path: str, limit: int) -> list[tuple[dict[str, Any], bytes, str]]:
    """The first ``limit`` samples of a shard: (record, image bytes, image extension)."""
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(root / shard_path) as tar:
        for member in tar:
            key, _, extension = member.name.partition(".")
            if key not in members and len(members) == limit:
                break
            members.setdefault(key, {})[extension] = tar.extractfile(member).read()
    samples = []
    for key, files in members.items():
        extension = next((e for e in IMAGE_FORMATS if e in files), None)
        if extension and "json" in files:
            samples.append((json.loads(files["json"]), files[extension], extension))
    return samples


def samples_markdown(root: Path, manifest: dict[str, Any], per_category: int = 1) -> str:
    """One block per category: the image (copied under ``samples/``) and its conversation."""
    blocks = []
    first_shards: dict[str, dict[str, Any]] = {}
    for shard in manifest["shards"]:
        current = first_shards.get(shard["category"])
        if current is None or (current["split"] != "train" and shard["split"] == "train"):
            first_shards[shard["category"]] = shard
    for category in sorted(first_shards):
        for record, image, extension in read_samples(root, first_shards[category]["path"], per_category):
            name = f"{SAMPLES_DIR}/{record['key']}.{extension}"
            atomic_write_bytes(root / name, image)
            width, height = decode_image(image).size
            turns = "\n>\n".join(
                f"> **{'User' if t['from'] == 'human' else 'Assistant'}:** {_quote(t['value'])}"
                for t in record["conversations"]
            )
            blocks.append(f"### {category} (`{record['key']}`, {width}x{height})\n\n![{record['key']}]({name})\n\n{turns}")
    return "\n\n".join(blocks) or "No shard has been written yet."


def _quote(text: str) -> str:
    return text.replace("<image>\n", "").replace("\n", "<br>")
