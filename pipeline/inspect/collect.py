"""What the inspector and the card show of a dataset: samples per category (accepted from the complete
shards, rejected from the rejects tables), every sample's scores, and per-stage pass rates."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.tables import SCORE_PREFIX

WRITER_STAGE = "writer"
LATE_STAGES = ("select", "reshard")  # after the run-wide decisions: beyond the target, and filtering late


@dataclass
class ShownSample:
    key: str
    category: str
    status: str  # accepted or rejected
    record: dict[str, Any]
    image: bytes | None
    image_format: str
    reject_stage: str = ""
    reject_reason: str = ""

    @property
    def conversations(self) -> list[dict[str, str]]:
        return self.record.get("conversations") or []

    @property
    def scores(self) -> dict[str, float]:
        return {entry["name"]: entry["value"] for entry in self.record.get("scores") or []}


@dataclass
class CategoryScores:
    accepted: dict[str, list[float]] = field(default_factory=dict)
    rejected: dict[str, list[float]] = field(default_factory=dict)


def shown_samples(root: Path, manifest: dict[str, Any], per_category: int) -> dict[str, list[ShownSample]]:
    """Up to ``per_category`` accepted and as many rejected samples of each category."""
    from pipeline.card.samples import read_samples  # the card package imports this module

    shown: dict[str, list[ShownSample]] = {}
    for category in categories(manifest):
        accepted: list[ShownSample] = []
        for shard in (s for s in manifest["shards"] if s["category"] == category):
            if len(accepted) >= per_category:
                break
            for record, image, extension in read_samples(root, shard["path"], per_category - len(accepted)):
                accepted.append(ShownSample(record["key"], category, "accepted", record, image, extension))
        rejected: list[ShownSample] = []
        for path in _rejects_paths(root, manifest, category):
            if len(rejected) >= per_category:
                break
            for row in pq.read_table(path).slice(0, per_category - len(rejected)).to_pylist():
                rejected.append(ShownSample(row["key"], category, "rejected", json.loads(row["record_json"]),
                                            row["image"], _image_format(row["image"]), row["reject_stage"],
                                            row["reject_reason"]))
        shown[category] = accepted + rejected
    return shown


def category_scores(root: Path, manifest: dict[str, Any], max_rows: int = 200_000) -> dict[str, CategoryScores]:
    """Every score of (up to ``max_rows`` accepted and rejected) samples per category."""
    result: dict[str, CategoryScores] = {}
    for category in categories(manifest):
        scores = result.setdefault(category, CategoryScores())
        rows = 0
        for shard in (s for s in manifest["shards"] if s["category"] == category):
            if rows >= max_rows:
                break
            path = root / shard["parquet"]
            # the score columns alone: a shard's parquet also holds every record's JSON
            table = pq.read_table(path, columns=[n for n in pq.read_schema(path).names if n.startswith(SCORE_PREFIX)])
            rows += table.num_rows
            for name in table.column_names:
                values = [v for v in table.column(name).to_pylist() if v is not None]
                scores.accepted.setdefault(name.removeprefix(SCORE_PREFIX), []).extend(values)
        rows = 0
        for path in _rejects_paths(root, manifest, category):
            if rows >= max_rows:
                break
            for text in pq.read_table(path, columns=["record_json"]).column("record_json").to_pylist():
                rows += 1
                for entry in json.loads(text).get("scores") or []:
                    scores.rejected.setdefault(entry["name"], []).append(entry["value"])
    return result


def pass_rates(root: Path, manifest: dict[str, Any]) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
    """Stages in the order they judged samples, and per category one row per stage with the samples that
    reached it, those it rejected and its pass rate (from the shards and rejects on disk)."""
    global_ids = _global_stage_ids(manifest)
    configured = [s["stage"] for s in manifest["stages"]]
    order = [s for s in configured if s not in global_ids and s not in LATE_STAGES and s != WRITER_STAGE]
    order += [WRITER_STAGE, *[s for s in configured if s in global_ids], "select",
              *[s for s in configured if s == "reshard"]]
    table: dict[str, list[dict[str, Any]]] = {}
    for category in categories(manifest):
        accepted = sum(s["count"] for s in manifest["shards"] if s["category"] == category)
        rejected: Counter = Counter()
        for path in _rejects_paths(root, manifest, category):
            rejected.update(pq.read_table(path, columns=["reject_stage"]).column("reject_stage").to_pylist())
        reaching = accepted + sum(rejected.values())
        rows = []
        for stage in order:
            count = rejected.get(stage, 0)
            rows.append({"stage": stage, "input": reaching, "rejected": count,
                         "pass_rate": 1 - count / reaching if reaching else None})
            reaching -= count
        table[category] = [r for r in rows if r["stage"] in configured or r["rejected"] or r["stage"] == WRITER_STAGE]
    return order, table


def categories(manifest: dict[str, Any]) -> list[str]:
    names = {s["category"] for s in manifest["shards"]}
    names |= {Path(p).parts[-2] for p in manifest.get("rejects", [])}
    return sorted(names)


def _rejects_paths(root: Path, manifest: dict[str, Any], category: str) -> list[Path]:
    return [root / p for p in manifest.get("rejects", []) if Path(p).parts[-2] == category and (root / p).is_file()]


def _global_stage_ids(manifest: dict[str, Any]) -> set[str]:
    from pipeline.stage import STAGES, GlobalStage

    ids = set()
    for spec in manifest["config"]["stages"]:
        try:
            if issubclass(STAGES.get(spec["name"]), GlobalStage):
                ids.add(spec.get("id") or spec["name"])
        except KeyError:  # a plugin stage not importable here: shown in config order
            continue
    return ids


def _image_format(data: bytes | None) -> str:
    if not data:
        return ""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return "webp" if data[8:12] == b"WEBP" else "bin"
