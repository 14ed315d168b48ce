"""Assembles the dataset's shards from finished work units, once the accepted set is decided.

For each category and split the accepted samples are the first N accepted by position, so the result does
not depend on the order units finished in; accepted samples beyond N are kept as rejects with reason
``surplus``. Shard k holds accepted samples k*S .. (k+1)*S-1 (S = ``dataset.shard_size``), its tar is the
byte-for-byte concatenation of those samples' members in the unit tars, its parquet the matching rows of the
unit indexes (in the dataset's one schema), and its rejects the rejected samples whose positions fall in its
span. Each shard's ``_stats.json`` is written last: a shard is complete iff it exists.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.fileio import atomic_path, atomic_write_text, sha256_file
from pipeline.layout import OutputLayout
from pipeline.planning import SplitTarget, WorkUnit
from pipeline.record import STATUS_REJECTED, canonical_json_text
from pipeline.tables import REJECTS_SCHEMA, SCORE_PREFIX, conform, record_row, shard_schema
from pipeline.tar_members import end_of_archive, member_bytes, read_members
from pipeline.unit_writer import reason_kind

SELECT_STAGE = "select"
SURPLUS_REASON = "surplus: accepted beyond the number of samples wanted"


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


def select_accepted(layout: OutputLayout, target: SplitTarget, units: list[WorkUnit],
                    removed: dict[str, tuple[str, str]] | None = None) -> tuple[list[Selected], int]:
    """The first ``target.target`` accepted samples by position (after ``removed``, run-wide decisions),
    and the number of accepted samples beyond them."""
    removed = removed or {}
    accepted = []
    for unit in units:
        index = pq.read_table(layout.unit_index(unit), columns=["key", "position", "status"]).to_pydict()
        accepted += [Selected(unit, key, position) for key, position, status in
                     zip(index["key"], index["position"], index["status"], strict=True)
                     if status != STATUS_REJECTED and key not in removed]
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
    involved = {s.unit.unit_id: s.unit for s in plan.samples}
    involved.update({u.unit_id: u for u in units if _overlaps(u, plan)})
    tables = {unit_id: pq.read_table(layout.unit_index(u)) for unit_id, u in involved.items()}
    tar_files = {unit_id: layout.unit_tar(u) for unit_id, u in involved.items()}
    selected = pa.array([s.key for s in plan.samples], pa.string())

    tar_path = layout.shard_tar(plan.category, plan.split, plan.index)
    with atomic_path(tar_path) as temp:
        _copy_members(temp, plan, tables, tar_files)

    schema = shard_schema(score_names)
    parts = [conform(t.filter(pc.is_in(t.column("key"), value_set=selected)), schema) for t in tables.values()]
    records = pa.concat_tables(parts).sort_by("key") if parts else schema.empty_table()
    parquet_path = layout.shard_parquet(plan.category, plan.split, plan.index)
    with atomic_path(parquet_path) as temp:
        pq.write_table(records, temp)

    rejects = _rejects_in_span(plan, tables, tar_files, selected, removed, image_format)
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


def _copy_members(temp, plan: ShardPlan, tables: dict[str, pa.Table], tar_files: dict) -> None:
    """The selected samples' members, byte for byte from the unit tars, in position order."""
    location = {}
    for unit_id, table in tables.items():
        columns = table.select(["key", "tar_offset", "tar_size"]).to_pydict()
        location.update({k: (unit_id, o, n) for k, o, n in
                         zip(columns["key"], columns["tar_offset"], columns["tar_size"], strict=True)})
    written = 0
    handles: dict[str, Any] = {}
    try:
        with open(temp, "wb") as out:
            for sample in plan.samples:
                unit_id, offset, size = location[sample.key]
                handle = handles.get(unit_id) or handles.setdefault(unit_id, open(tar_files[unit_id], "rb"))
                handle.seek(offset)
                block = handle.read(size)
                if len(block) != size:
                    raise ValueError(f"{tar_files[unit_id]} is truncated; delete its _stats.json to redo the unit")
                out.write(block)
                written += size
            out.write(end_of_archive(written))
    finally:
        for handle in handles.values():
            handle.close()


def _overlaps(unit: WorkUnit, plan: ShardPlan) -> bool:
    last = unit.first_position + unit.num_samples - 1
    return last >= plan.first_position and (plan.end_position is None or unit.first_position < plan.end_position)


def _rejects_in_span(plan: ShardPlan, tables: dict[str, pa.Table], tar_files: dict, selected: pa.Array,
                     removed: dict[str, tuple[str, str]], image_format: str) -> list[dict]:
    rejects = []
    columns = ["key", "position", "status", "reject_stage", "reject_reason", "record_json", "image", "tar_offset",
               "tar_size"]
    for unit_id, table in tables.items():
        position = table.column("position")
        in_span = pc.greater_equal(position, plan.first_position)
        if plan.end_position is not None:
            in_span = pc.and_(in_span, pc.less(position, plan.end_position))
        mask = pc.and_(in_span, pc.invert(pc.is_in(table.column("key"), value_set=selected)))
        for row in table.filter(mask).select(columns).to_pylist():
            if row["status"] == STATUS_REJECTED:
                stage, reason, record_json, image = (row["reject_stage"], row["reject_reason"], row["record_json"],
                                                     row["image"])
            else:  # accepted by every stage, then removed by a run-wide decision or beyond the target
                stage, reason = removed.get(row["key"], (SELECT_STAGE, SURPLUS_REASON))
                record = json.loads(row["record_json"])
                record.update(status=STATUS_REJECTED, reject_stage=stage, reject_reason=reason)
                record_json = canonical_json_text(record)
                image = _image_member(tar_files[unit_id], row, image_format)
            rejects.append({"key": row["key"], "category": plan.category, "split": plan.split, "reject_stage": stage,
                            "reject_reason": reason, "record_json": record_json, "image": image,
                            "_position": row["position"]})
    rejects.sort(key=lambda r: r.pop("_position"))
    return rejects


def _image_member(tar_path, row: dict, image_format: str) -> bytes:
    with open(tar_path, "rb") as handle:
        handle.seek(row["tar_offset"])
        block = handle.read(row["tar_size"])
    return read_members(block + end_of_archive(len(block)))[f"{row['key']}.{image_format}"]


def _reasons(rejects: list[dict]) -> dict[str, dict[str, int]]:
    by_stage: dict[str, Counter] = {}
    for row in rejects:
        by_stage.setdefault(row["reject_stage"], Counter())[reason_kind(row["reject_reason"])] += 1
    return {stage: dict(sorted(counts.items())) for stage, counts in sorted(by_stage.items())}


def _score_means(table: pa.Table) -> dict[str, float]:
    means = {}
    for name in table.column_names:
        if name.startswith(SCORE_PREFIX) and table.column(name).null_count < table.num_rows:
            means[name.removeprefix(SCORE_PREFIX)] = pc.mean(table.column(name)).as_py()
    return means


def write_ready_shard(layout: OutputLayout, category: str, split: str, index: int,
                      samples: list[tuple[dict[str, Any], dict[str, bytes]]]) -> dict[str, Any]:
    """Write a shard of samples whose members are already encoded (``{"jpg": ..., "txt": ...}``; the JSON
    member comes from the record), e.g. real data converted as it is: tar, parquet, empty rejects, stats last.
    Every sample must have the same members."""
    member_sets = {tuple(sorted(members)) for _, members in samples}
    if len(member_sets) > 1:
        raise ValueError(f"{category}/{split}-{index:05d}: samples have different members {sorted(member_sets)}")
    tar_path = layout.shard_tar(category, split, index)
    with atomic_path(tar_path) as temp:
        body = bytearray()
        for json_dict, members in samples:
            files = {**members, "json": canonical_json_text(json_dict).encode("utf-8")}
            for extension in sorted(files):
                body += member_bytes(f"{json_dict['key']}.{extension}", files[extension])
        body += end_of_archive(len(body))
        temp.write_bytes(bytes(body))
    score_names = sorted({entry["name"] for json_dict, _ in samples for entry in json_dict["scores"]})
    rows = pa.Table.from_pylist([record_row(json_dict) for json_dict, _ in samples], schema=shard_schema(score_names))
    parquet_path = layout.shard_parquet(category, split, index)
    with atomic_path(parquet_path) as temp:
        pq.write_table(rows, temp)
    rejects_path = layout.rejects(category, split, index)
    with atomic_path(rejects_path) as temp:
        pq.write_table(REJECTS_SCHEMA.empty_table(), temp)
    keys = [json_dict["key"] for json_dict, _ in samples]
    image_format = next((e for e in ("jpg", "png", "webp") if e in next(iter(member_sets), ())), None)
    stats = {"path": str(tar_path.relative_to(layout.root)), "category": category, "split": split, "index": index,
             "count": len(keys), "first_key": keys[0] if keys else None, "last_key": keys[-1] if keys else None,
             "rejected": 0, "reject_reasons": {}, "image_format": image_format, "sha256": sha256_file(tar_path),
             "bytes": tar_path.stat().st_size, "parquet": str(parquet_path.relative_to(layout.root)),
             "parquet_sha256": sha256_file(parquet_path), "rejects": str(rejects_path.relative_to(layout.root)),
             "score_means": _score_means(rows)}
    atomic_write_text(layout.shard_stats(category, split, index), json.dumps(stats, indent=2, sort_keys=True))
    return stats
