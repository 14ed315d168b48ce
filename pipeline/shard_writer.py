"""Assembles the dataset's shards from finished work units, once the accepted set is decided.

For each category and split the accepted samples are the first N accepted by position, so the result does
not depend on the order units finished in; accepted samples beyond N are kept as rejects with reason
``surplus``. Shard k holds accepted samples k*S .. (k+1)*S-1 (S = ``dataset.shard_size``), its tar is the
byte-for-byte concatenation of those samples' members in the unit tars, and its rejects are the rejected
samples whose positions fall in its span. Each shard's ``_stats.json`` is written last: a shard is complete
iff it exists.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.fileio import atomic_path, atomic_write_text, sha256_file
from pipeline.layout import OutputLayout
from pipeline.planning import SplitTarget, WorkUnit
from pipeline.record import STATUS_REJECTED, canonical_json_text
from pipeline.tar_members import end_of_archive, read_members
from pipeline.unit_writer import reason_kind

SELECT_STAGE = "select"
SURPLUS_REASON = "surplus: accepted beyond the number of samples wanted"
RECORD_COLUMNS = (
    ("key", pa.string()), ("category", pa.string()), ("split", pa.string()), ("seed", pa.int64()),
    ("seed_caption", pa.string()), ("caption", pa.string()), ("description", pa.string()),
    ("conversations", pa.string()), ("scores", pa.string()), ("provenance", pa.string()), ("metadata", pa.string()),
    ("status", pa.string()), ("reject_stage", pa.string()), ("reject_reason", pa.string()),
)
REJECTS_SCHEMA = pa.schema([
    ("key", pa.string()), ("category", pa.string()), ("split", pa.string()), ("reject_stage", pa.string()),
    ("reject_reason", pa.string()), ("record_json", pa.string()), ("image", pa.binary()),
])
_INDEX_COLUMNS = ["key", "position", "status", "tar_offset", "tar_size"]


def shard_schema(score_names: Iterable[str]) -> pa.Schema:
    """One schema for every shard parquet of a dataset: the record's fields and a column per score name."""
    return pa.schema([*RECORD_COLUMNS, *[(f"score/{name}", pa.float64()) for name in sorted(score_names)]])


@dataclass(frozen=True)
class Selected:
    unit: WorkUnit
    key: str
    position: int


@dataclass(frozen=True)
class ShardPlan:
    category: str
    split: str
    index: int
    samples: tuple[Selected, ...]
    first_position: int  # the span whose rejects this shard keeps
    end_position: int | None  # None: to the end

    def covers(self, position: int) -> bool:
        return self.first_position <= position and (self.end_position is None or position < self.end_position)


def select_accepted(layout: OutputLayout, target: SplitTarget, units: list[WorkUnit],
                    removed: dict[str, tuple[str, str]] | None = None) -> tuple[list[Selected], int]:
    """The first ``target.target`` accepted samples by position (after ``removed``, run-wide decisions),
    and the number of accepted samples beyond them."""
    removed = removed or {}
    accepted = []
    for unit in units:
        index = pq.read_table(layout.unit_index(unit), columns=["key", "position", "status"]).to_pylist()
        accepted += [Selected(unit, row["key"], row["position"]) for row in index
                     if row["status"] != STATUS_REJECTED and row["key"] not in removed]
    accepted.sort(key=lambda s: s.position)
    return accepted[:target.target], max(0, len(accepted) - target.target)


def plan_shards(target: SplitTarget, selected: list[Selected], shard_size: int) -> list[ShardPlan]:
    chunks = [selected[i:i + shard_size] for i in range(0, len(selected), shard_size)] or [[]]
    plans = []
    for index, chunk in enumerate(chunks):
        start = 0 if index == 0 else chunk[0].position
        end = chunks[index + 1][0].position if index + 1 < len(chunks) else None
        plans.append(ShardPlan(target.category, target.split, index, tuple(chunk), start, end))
    return plans


def shard_is_current(layout: OutputLayout, plan: ShardPlan) -> bool:
    path = layout.shard_stats(plan.category, plan.split, plan.index)
    if not path.is_file():
        return False
    stats = json.loads(path.read_text())
    keys = [s.key for s in plan.samples]
    return stats.get("count") == len(keys) and stats.get("first_key") == (keys[0] if keys else None) \
        and stats.get("last_key") == (keys[-1] if keys else None)


def write_shard(layout: OutputLayout, plan: ShardPlan, units: list[WorkUnit], score_names: list[str],
                image_format: str, removed: dict[str, tuple[str, str]] | None = None) -> dict[str, Any]:
    """Write one shard (tar, parquet, rejects) and, last, its stats; returns the stats."""
    removed = removed or {}
    selected_keys = {s.key for s in plan.samples}
    involved = {s.unit.unit_id: s.unit for s in plan.samples}
    involved.update({u.unit_id: u for u in units if _overlaps(u, plan)})
    tables = {unit_id: pq.read_table(layout.unit_index(u)).to_pylist() for unit_id, u in involved.items()}
    rows_by_key = {row["key"]: (unit_id, row) for unit_id, rows in tables.items() for row in rows}
    tar_files = {unit_id: layout.unit_tar(u) for unit_id, u in involved.items()}

    tar_path = layout.shard_tar(plan.category, plan.split, plan.index)
    records = []
    with atomic_path(tar_path) as temp, open(temp, "wb") as out:
        written = 0
        handles: dict[str, Any] = {}
        try:
            for sample in plan.samples:
                unit_id, row = rows_by_key[sample.key]
                handle = handles.get(unit_id) or handles.setdefault(unit_id, open(tar_files[unit_id], "rb"))
                handle.seek(row["tar_offset"])
                block = handle.read(row["tar_size"])
                if len(block) != row["tar_size"]:
                    raise ValueError(f"{tar_files[unit_id]} is truncated; delete its _stats.json to redo the unit")
                out.write(block)
                written += len(block)
                records.append(json.loads(row["record_json"]))
            out.write(end_of_archive(written))
        finally:
            for handle in handles.values():
                handle.close()

    parquet_path = layout.shard_parquet(plan.category, plan.split, plan.index)
    with atomic_path(parquet_path) as temp:
        pq.write_table(_records_table(records, score_names), temp)

    rejects = _rejects_in_span(layout, plan, tables, tar_files, selected_keys, removed, image_format)
    rejects_path = layout.rejects(plan.category, plan.split, plan.index)
    with atomic_path(rejects_path) as temp:
        pq.write_table(pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA), temp)

    keys = [s.key for s in plan.samples]
    stats = {
        "path": str(tar_path.relative_to(layout.root)),
        "category": plan.category,
        "split": plan.split,
        "index": plan.index,
        "count": len(keys),
        "first_key": keys[0] if keys else None,
        "last_key": keys[-1] if keys else None,
        "rejected": len(rejects),
        "reject_reasons": _reasons(rejects),
        "image_format": image_format,
        "sha256": sha256_file(tar_path),
        "bytes": tar_path.stat().st_size,
        "parquet": str(parquet_path.relative_to(layout.root)),
        "parquet_sha256": sha256_file(parquet_path),
        "rejects": str(rejects_path.relative_to(layout.root)),
        "score_means": _score_means(records),
    }
    atomic_write_text(layout.shard_stats(plan.category, plan.split, plan.index), json.dumps(stats, indent=2, sort_keys=True))
    return stats


def _overlaps(unit: WorkUnit, plan: ShardPlan) -> bool:
    last = unit.first_position + unit.num_samples - 1
    return last >= plan.first_position and (plan.end_position is None or unit.first_position < plan.end_position)


def _rejects_in_span(layout: OutputLayout, plan: ShardPlan, tables: dict[str, list[dict]], tar_files: dict,
                     selected: set[str], removed: dict[str, tuple[str, str]], image_format: str) -> list[dict]:
    rejects = []
    for unit_id, rows in tables.items():
        for row in rows:
            if not plan.covers(row["position"]) or row["key"] in selected:
                continue
            record = json.loads(row["record_json"])
            image = row["image"]
            if row["status"] == STATUS_REJECTED:
                stage, reason = row["reject_stage"], row["reject_reason"]
            else:  # accepted by every stage, then removed by a run-wide decision or beyond the target
                stage, reason = removed.get(row["key"], (SELECT_STAGE, SURPLUS_REASON))
                record.update(status=STATUS_REJECTED, reject_stage=stage, reject_reason=reason)
                image = _image_member(tar_files[unit_id], row, image_format)
            rejects.append({"key": row["key"], "category": plan.category, "split": plan.split, "reject_stage": stage,
                            "reject_reason": reason, "record_json": canonical_json_text(record), "image": image,
                            "_position": row["position"]})
    rejects.sort(key=lambda r: r.pop("_position"))
    return rejects


def _image_member(tar_path, row: dict, image_format: str) -> bytes:
    with open(tar_path, "rb") as handle:
        handle.seek(row["tar_offset"])
        block = handle.read(row["tar_size"])
    return read_members(block + end_of_archive(len(block)))[f"{row['key']}.{image_format}"]


def _records_table(records: list[dict[str, Any]], score_names: list[str]) -> pa.Table:
    """One row per sample: the record's fields (nested ones as canonical JSON) and a float column per score."""
    schema = shard_schema(score_names)
    rows = []
    for record in records:
        row = {name: canonical_json_text(record[name]) if isinstance(record[name], (dict, list)) else record[name]
               for name, _ in RECORD_COLUMNS}
        row.update({f"score/{entry['name']}": entry["value"] for entry in record["scores"]})
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema)


def _reasons(rejects: list[dict]) -> dict[str, dict[str, int]]:
    by_stage: dict[str, Counter] = {}
    for row in rejects:
        by_stage.setdefault(row["reject_stage"], Counter())[reason_kind(row["reject_reason"])] += 1
    return {stage: dict(sorted(counts.items())) for stage, counts in sorted(by_stage.items())}


def _score_means(records: list[dict[str, Any]]) -> dict[str, float]:
    totals: Counter = Counter()
    counts: Counter = Counter()
    for record in records:
        for entry in record["scores"]:
            totals[entry["name"]] += entry["value"]
            counts[entry["name"]] += 1
    return {name: totals[name] / counts[name] for name in sorted(totals)}
