"""The dataset index, written after the shards: ``sizes.json`` files and ``manifest.json``.

It is rebuilt from the shard and unit stats on disk, so it is right after any resume. Only shards whose
``_stats.json`` exists are listed: a tar without one is invisible to everything downstream.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.config import RunConfig
from pipeline.fileio import atomic_write_text
from pipeline.layout import OutputLayout
from pipeline.planning import SplitTarget, WorkUnit
from pipeline.provenance import git_sha, package_versions
from pipeline.stage_runner import StageStats
from pipeline.unit_writer import WRITER_STAGE


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is corrupt ({error}); delete it to redo what it describes") from None


def check_unique_keys(layout: OutputLayout, shards: list[dict[str, Any]]) -> None:
    """Sample keys must be unique across the whole dataset (WebDataset and `datasets` key samples by them)."""
    seen: dict[str, str] = {}
    for shard in shards:
        for key in pq.read_table(layout.root / shard["parquet"], columns=["key"]).column("key").to_pylist():
            if key in seen:
                raise ValueError(f"sample key {key!r} is in both {seen[key]} and {shard['path']}")
            seen[key] = shard["path"]


def write_index(layout: OutputLayout, config: RunConfig, targets: list[SplitTarget], shards: list[dict[str, Any]],
                units: dict[str, list[WorkUnit]], failed: dict[str, str], complete: bool,
                removed: dict[str, tuple[str, str]] | None = None) -> dict[str, Any]:
    """Write ``sizes.json`` (root and per category) and ``manifest.json``; return the manifest."""
    check_unique_keys(layout, shards)
    listed = [s for s in shards if s["count"]]
    atomic_write_text(layout.sizes, json.dumps({s["path"]: s["count"] for s in listed}, indent=2))
    for category in config.categories:
        category_sizes = {Path(s["path"]).name: s["count"] for s in listed if s["category"] == category}
        atomic_write_text(layout.root / "data" / category / "sizes.json", json.dumps(category_sizes, indent=2))

    unit_stats = {u.unit_id: read_json(layout.unit_stats(u)) for split_units in units.values() for u in split_units
                  if layout.unit_stats(u).is_file()}
    planned = sum(len(v) for v in units.values())
    manifest = {
        "name": config.name,
        "complete": complete,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "packages": package_versions(),
        "seed": config.seed,
        "units": {"planned": planned, "complete": len(unit_stats), "failed": len(failed),
                  "rounds": 1 + max((u.round for v in units.values() for u in v), default=0)},
        "counts": _counts(config, targets, shards, unit_stats),
        "stages": _stage_table(config, unit_stats, shards, removed or {}),
        "shards": [_shard_entry(s) for s in listed],
        "rejects": [s["rejects"] for s in shards],
        "failed_units": failed,
        "config": config.model_dump(mode="json"),
    }
    atomic_write_text(layout.manifest, json.dumps(manifest, indent=2))
    return manifest


def _counts(config: RunConfig, targets: list[SplitTarget], shards: list[dict[str, Any]],
            unit_stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    categories: dict[str, dict[str, dict[str, Any]]] = {}
    for target in targets:
        in_split = [s for s in shards if (s["category"], s["split"]) == (target.category, target.split)]
        accepted = sum(s["count"] for s in in_split)
        reasons: Counter = Counter()
        for shard in in_split:
            for stage, kinds in shard["reject_reasons"].items():
                reasons.update({f"{stage}: {kind}": n for kind, n in kinds.items()})
        attempted = sum(s["samples"] for s in unit_stats.values()
                        if (s["unit"]["category"], s["unit"]["split"]) == (target.category, target.split))
        categories.setdefault(target.category, {})[target.split] = {
            "target": target.target, "accepted": accepted, "rejected": sum(s["rejected"] for s in in_split),
            "attempted": attempted, "shortfall": max(0, target.target - accepted),
            "main_reject_reasons": dict(reasons.most_common(5)),
        }
    accepted = sum(s["accepted"] for c in categories.values() for s in c.values())
    rejected = sum(s["rejected"] for c in categories.values() for s in c.values())
    shortfalls = {f"{c}/{s}": v for c, splits in categories.items() for s, v in splits.items() if v["shortfall"]}
    return {"accepted": accepted, "rejected": rejected, "categories": categories, "shortfalls": shortfalls}


def _stage_table(config: RunConfig, unit_stats: dict[str, dict[str, Any]], shards: list[dict[str, Any]],
                 removed: dict[str, tuple[str, str]]) -> list[dict]:
    """Per stage: samples in, accepted out, reasons, time and GPU time per accepted sample, cache use.
    Run-wide stages count what they removed after the units as their rejects."""
    from pipeline.unit_writer import reason_kind

    removals: dict[str, Counter] = {}
    for stage_id, reason in removed.values():
        removals.setdefault(stage_id, Counter())[reason_kind(reason)] += 1
    accepted = sum(s["count"] for s in shards)
    rows = []
    kinds = {spec.stage_id: spec for spec in config.stages}
    for stage_id in [*kinds, WRITER_STAGE]:
        total = StageStats()
        reasons: Counter = Counter()
        for stats in unit_stats.values():
            if stage_id in stats["stages"]:
                total.add(StageStats.from_dict(stats["stages"][stage_id]))
            reasons.update(stats["reject_reasons"].get(stage_id, {}))
        reasons.update(removals.get(stage_id, {}))
        total.rejected += sum(removals.get(stage_id, Counter()).values())
        spec = kinds.get(stage_id)
        rows.append({
            "stage": stage_id,
            "kind": spec.name if spec else WRITER_STAGE,
            "role": spec.stage_class().role if spec else "writer",
            "input": total.records_in,
            "accepted_out": total.records_in - total.rejected,
            "rejected": total.rejected,
            "errors": total.errors,
            "reasons": dict(sorted(reasons.items())),
            "busy_seconds": total.busy_seconds,
            "gpu_seconds": total.gpu_seconds,
            "model_seconds": total.model_seconds,  # what shared models spent on its calls: `fusion plan` scales it
            "gpus_reserved": spec.resources.gpus_reserved if spec else 0.0,
            "seconds_per_accepted": total.busy_seconds / accepted if accepted else None,
            "gpu_seconds_per_accepted": total.gpu_seconds / accepted if accepted else None,
            "cache": {"hits": total.cache_hits, "misses": total.cache_misses},
        })
    return rows


def _shard_entry(stats: dict[str, Any]) -> dict[str, Any]:
    keys = ("path", "category", "split", "count", "rejected", "sha256", "bytes", "parquet", "parquet_sha256",
            "rejects", "image_format")
    return {k: stats[k] for k in keys}


def load_manifest(root: Path) -> dict[str, Any]:
    path = OutputLayout(Path(root)).manifest
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {root} the output of `fusion synth`?")
    return read_json(path)
