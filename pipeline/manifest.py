"""The dataset index written after the shards: ``sizes.json`` files and ``manifest.json``.

Everything here is rebuilt from the ``_stats.json`` files on disk, so it is correct after any resume.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.config import RunConfig
from pipeline.fileio import atomic_write_text
from pipeline.provenance import git_sha, package_versions
from pipeline.shards import OutputLayout
from pipeline.units import SPLITS, WorkUnit, plan_units


def planned_units(config: RunConfig) -> list[WorkUnit]:
    units = []
    for category, sizes in config.categories.items():
        for split in SPLITS:
            units += plan_units(config.seed, category, split, sizes.split_sizes()[split], config.dataset.unit_size)
    return units


def read_unit_stats(layout: OutputLayout, units: list[WorkUnit]) -> dict[str, dict[str, Any]]:
    """Stats of the complete units, by unit id."""
    stats = {}
    for unit in units:
        path = layout.shard_stats(unit)
        if path.is_file():
            try:
                stats[unit.unit_id] = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is corrupt ({error}); delete it to redo that shard") from None
    return stats


def write_index(layout: OutputLayout, config: RunConfig) -> dict[str, Any]:
    """Write ``sizes.json`` (root and per category) and ``manifest.json``; return the manifest."""
    units = planned_units(config)
    stats = read_unit_stats(layout, units)
    complete_units = [u for u in units if u.unit_id in stats]

    root_sizes = {stats[u.unit_id]["path"]: stats[u.unit_id]["count"] for u in complete_units}
    atomic_write_text(layout.sizes, json.dumps(root_sizes, indent=2))
    for category in config.categories:
        category_sizes = {
            stats[u.unit_id]["shard"]: stats[u.unit_id]["count"] for u in complete_units if u.category == category
        }
        atomic_write_text(layout.root / "data" / category / "sizes.json", json.dumps(category_sizes, indent=2))

    manifest = {
        "name": config.name,
        "complete": len(complete_units) == len(units),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "packages": package_versions(),
        "seed": config.seed,
        "units": {"planned": len(units), "complete": len(complete_units)},
        "counts": _counts(config, complete_units, stats),
        "shards": [_shard_entry(u, stats[u.unit_id], layout) for u in complete_units],
        "config": config.model_dump(mode="json"),
    }
    atomic_write_text(layout.manifest, json.dumps(manifest, indent=2))
    return manifest


def _counts(config: RunConfig, units: list[WorkUnit], stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    categories: dict[str, dict[str, Counter]] = {}
    stage_rejects: dict[str, Counter] = {}
    for unit in units:
        unit_stats = stats[unit.unit_id]
        split_counts = categories.setdefault(unit.category, {}).setdefault(unit.split, Counter())
        split_counts["accepted"] += unit_stats["count"]
        split_counts["rejected"] += unit_stats["rejected"]
        for stage, reasons in unit_stats["reject_reasons"].items():
            stage_rejects.setdefault(stage, Counter()).update(reasons)

    accepted = sum(s["accepted"] for c in categories.values() for s in c.values())
    rejected = sum(s["rejected"] for c in categories.values() for s in c.values())
    # Each stage sees what earlier stages kept; the first stage creates every sample.
    stages = []
    remaining = accepted + rejected
    for spec in config.stages:
        reasons = stage_rejects.get(spec.name, Counter())
        dropped = sum(reasons.values())
        stages.append({"stage": spec.name, "input": remaining, "rejected": dropped, "reasons": dict(reasons)})
        remaining -= dropped
    return {
        "accepted": accepted,
        "rejected": rejected,
        "categories": {c: {s: dict(n) for s, n in splits.items()} for c, splits in categories.items()},
        "stages": stages,
    }


def _shard_entry(unit: WorkUnit, stats: dict[str, Any], layout: OutputLayout) -> dict[str, Any]:
    return {
        "path": stats["path"],
        "category": unit.category,
        "split": unit.split,
        "count": stats["count"],
        "rejected": stats["rejected"],
        "sha256": stats["sha256"],
        "bytes": stats["bytes"],
        "parquet": str(layout.shard_parquet(unit).relative_to(layout.root)),
        "parquet_sha256": stats["parquet_sha256"],
        "rejects": unit.rejects_path,
    }


def load_manifest(root: Path) -> dict[str, Any]:
    path = OutputLayout(root).manifest
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {root} the output of `fusion synth`?")
    return json.loads(path.read_text())
