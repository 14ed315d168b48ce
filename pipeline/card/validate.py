"""Offline checks of a dataset card against the files it describes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard

from pipeline.layout import OutputLayout

REQUIRED_YAML_FIELDS = (
    "license", "task_categories", "language", "size_categories", "annotations_creators", "pretty_name", "tags",
    "configs", "dataset_info",
)


def validate_card(root: Path) -> list[str]:
    """The problems found (empty when the card is sound)."""
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
            paths = files["path"] if isinstance(files["path"], list) else [files["path"]]
            matched = [p for pattern in paths for p in sorted(layout.root.glob(pattern))]
            missing = [p for p in paths if not any(layout.root.glob(p))]
            if missing:
                problems.append(f"config {entry['config_name']!r} split {files['split']!r}: {', '.join(missing)} "
                                "matches no file")
            counted = sum(sizes.get(p.relative_to(layout.root).as_posix(), 0) for p in matched)
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
