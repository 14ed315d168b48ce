"""`fusion reshard DIR --where EXPR --out DIR2`: filter late, without re-synthesis.

Every score is a column of the shard parquets, so other thresholds are a new selection over them: the
samples of DIR that pass ``EXPR`` (see ``where.py``) are copied byte for byte into new shards of DIR2 (same
shard size, same order), the others become rejects of stage ``reshard`` beside DIR's own rejects, and DIR2
gets its manifest, ``sizes.json`` files and card like any dataset. DIR is only read.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.fileio import atomic_path, atomic_write_text, sha256_file
from pipeline.indexing import check_unique_keys, load_manifest
from pipeline.layout import OutputLayout
from pipeline.planning import SPLITS
from pipeline.record import STATUS_REJECTED, canonical_json_text
from pipeline.reshard.where import WhereError, compile_where, evaluate_where
from pipeline.tables import REJECTS_SCHEMA, SCORE_PREFIX, conform
from pipeline.tar_members import end_of_archive, member_bytes
from pipeline.unit_writer import reason_kind

RESHARD_STAGE = "reshard"


@dataclass
class SplitSelection:
    """One category and split of the source: the rows kept (with their members) and the rejects."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    members: list[list[tuple[str, bytes]]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    seen: int = 0

    def summary(self) -> dict[str, Any]:
        reasons: Counter = Counter(f"{row['reject_stage']}: {reason_kind(row['reject_reason'])}" for row in self.rejects)
        return {"seen": self.seen, "kept": len(self.rows), "rejected": len(self.rejects), "reasons": reasons}


def reshard(source: Path, out: Path, where: str) -> dict[str, Any]:
    """Write the samples of ``source`` passing ``where`` as a new dataset in ``out``; returns its manifest."""
    source, out = Path(source), Path(out)
    manifest = load_manifest(source)
    if out.resolve() == source.resolve():
        raise ValueError("--out must be another folder than the dataset it filters")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new --out folder")
    started = time.perf_counter()
    schema = _dataset_schema(source, manifest)
    expression = compile_where(where, schema)
    layout = OutputLayout(out)
    out.mkdir(parents=True, exist_ok=True)
    shard_size = manifest["config"]["dataset"]["shard_size"]
    shards, summaries = [], {}
    for (category, split), (shard_entries, reject_paths) in _splits(source, manifest).items():
        # One split in memory at a time: its kept rows and members, and its rejects.
        selection = _select(source, shard_entries, reject_paths, schema, expression, where)
        shards += _write_split(layout, category, split, selection, schema, shard_size)
        summaries[(category, split)] = selection.summary()
    check_unique_keys(layout, shards)
    new_manifest = _manifest(manifest, shards, summaries, source, where, time.perf_counter() - started)
    _write_index(layout, new_manifest, shards)
    if (source / "config.yaml").is_file():
        shutil.copyfile(source / "config.yaml", out / "config.yaml")
    from pipeline.card import validate_card, write_card

    write_card(out)
    problems = validate_card(out)
    if problems:
        raise ValueError(f"the resharded card of {out} has problems: {'; '.join(problems)}")
    return new_manifest


def _dataset_schema(root: Path, manifest: dict[str, Any]) -> pa.Schema:
    if not manifest["shards"]:
        raise ValueError(f"{root} has no complete shard to filter")
    return pq.read_schema(root / manifest["shards"][0]["parquet"])


def _splits(root: Path, manifest: dict[str, Any]) -> dict[tuple[str, str], tuple[list[dict], list[str]]]:
    """Per category and split, in order: its shards and its rejects files."""
    splits: dict[tuple[str, str], tuple[list[dict], list[str]]] = {}
    for shard in sorted(manifest["shards"], key=lambda s: (s["category"], _split_rank(s["split"]), s["path"])):
        splits.setdefault((shard["category"], shard["split"]), ([], []))[0].append(shard)
    for path in manifest.get("rejects", []):
        category, name = Path(path).parts[-2], Path(path).name
        split = name.rsplit("-", 1)[0]
        if (root / path).is_file():
            splits.setdefault((category, split), ([], []))[1].append(path)
    return dict(sorted(splits.items(), key=lambda item: (item[0][0], _split_rank(item[0][1]))))


def _select(root: Path, shards: list[dict], reject_paths: list[str], schema: pa.Schema, expression,
            where: str) -> SplitSelection:
    selection = SplitSelection()
    for shard in shards:
        table = conform(pq.read_table(root / shard["parquet"]), schema)
        passed = evaluate_where(expression, table)
        members = _tar_members_by_key(root / shard["path"])
        for row, keep in zip(table.to_pylist(), passed, strict=True):
            selection.seen += 1
            if keep:
                selection.rows.append(row)
                selection.members.append(members[row["key"]])
            else:
                selection.rejects.append(_reject_row(row, members[row["key"]], where))
    for path in reject_paths:  # the source's own rejects stay rejects
        selection.rejects += pq.read_table(root / path).to_pylist()
    return selection


def _split_rank(split: str) -> int:
    return SPLITS.index(split) if split in SPLITS else len(SPLITS)


def _tar_members_by_key(path: Path) -> dict[str, list[tuple[str, bytes]]]:
    import tarfile

    members: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile():
                key = member.name.split(".", 1)[0]
                members.setdefault(key, []).append((member.name, tar.extractfile(member).read()))
    return members


def _reject_row(row: dict[str, Any], members: list[tuple[str, bytes]], where: str) -> dict[str, Any]:
    record = {name: row[name] for name in ("key", "category", "split", "seed", "seed_caption", "caption",
                                           "description")}
    record.update(conversations=json.loads(row["conversations"]), scores=json.loads(row["scores"]),
                  provenance=row["provenance"], metadata=row["metadata"], status=STATUS_REJECTED,
                  reject_stage=RESHARD_STAGE, reject_reason=f"where: not ({where})")
    image = next((data for name, data in members if name.rsplit(".", 1)[-1] in ("jpg", "png", "webp")), None)
    return {"key": row["key"], "category": row["category"], "split": row["split"], "reject_stage": RESHARD_STAGE,
            "reject_reason": record["reject_reason"], "record_json": canonical_json_text(record), "image": image}


def _write_split(layout: OutputLayout, category: str, split: str, selection: SplitSelection, schema: pa.Schema,
                 shard_size: int) -> list[dict[str, Any]]:
    count = max(1, math.ceil(len(selection.rows) / shard_size))
    per_rejects = max(1, math.ceil(len(selection.rejects) / count))
    stats = []
    for index in range(count):
        rows = selection.rows[index * shard_size:(index + 1) * shard_size]
        members = selection.members[index * shard_size:(index + 1) * shard_size]
        rejects = selection.rejects[index * per_rejects:(index + 1) * per_rejects]
        stats.append(_write_shard(layout, category, split, index, rows, members, rejects, schema))
    return stats


def _write_shard(layout: OutputLayout, category: str, split: str, index: int, rows: list[dict[str, Any]],
                 members: list[list[tuple[str, bytes]]], rejects: list[dict[str, Any]],
                 schema: pa.Schema) -> dict[str, Any]:
    tar_path = layout.shard_tar(category, split, index)
    with atomic_path(tar_path) as temp:
        body = bytearray()
        for sample in members:
            for name, data in sample:
                body += member_bytes(name, data)
        body += end_of_archive(len(body))
        temp.write_bytes(bytes(body))
    table = pa.Table.from_pylist(rows, schema=schema)
    parquet_path = layout.shard_parquet(category, split, index)
    with atomic_path(parquet_path) as temp:
        pq.write_table(table, temp)
    rejects_path = layout.rejects(category, split, index)
    with atomic_path(rejects_path) as temp:
        pq.write_table(pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA), temp)
    keys = [row["key"] for row in rows]
    formats = {name.rsplit(".", 1)[-1] for sample in members for name, _ in sample} & {"jpg", "png", "webp"}
    reasons: dict[str, Counter] = {}
    for row in rejects:
        reasons.setdefault(row["reject_stage"], Counter())[reason_kind(row["reject_reason"])] += 1
    stats = {
        "path": str(tar_path.relative_to(layout.root)), "category": category, "split": split, "index": index,
        "count": len(keys), "first_key": keys[0] if keys else None, "last_key": keys[-1] if keys else None,
        "rejected": len(rejects), "reject_reasons": {s: dict(sorted(c.items())) for s, c in sorted(reasons.items())},
        "image_format": next(iter(sorted(formats)), "jpg"), "sha256": sha256_file(tar_path),
        "bytes": tar_path.stat().st_size, "parquet": str(parquet_path.relative_to(layout.root)),
        "parquet_sha256": sha256_file(parquet_path), "rejects": str(rejects_path.relative_to(layout.root)),
        "score_means": _score_means(table),
    }
    atomic_write_text(layout.shard_stats(category, split, index), json.dumps(stats, indent=2, sort_keys=True))
    return stats


def _score_means(table: pa.Table) -> dict[str, float]:
    import pyarrow.compute as pc

    return {name.removeprefix(SCORE_PREFIX): pc.mean(table.column(name)).as_py() for name in table.column_names
            if name.startswith(SCORE_PREFIX) and table.column(name).null_count < table.num_rows}


def _manifest(source: dict[str, Any], shards: list[dict[str, Any]], summaries: dict[tuple[str, str], dict[str, Any]],
              root: Path, where: str, seconds: float) -> dict[str, Any]:
    categories: dict[str, dict[str, Any]] = {}
    for (category, split), summary in summaries.items():
        previous = source["counts"]["categories"].get(category, {}).get(split, {})
        target = previous.get("target", summary["kept"])
        categories.setdefault(category, {})[split] = {
            "target": target, "accepted": summary["kept"], "rejected": summary["rejected"],
            "attempted": previous.get("attempted", summary["seen"]), "shortfall": max(0, target - summary["kept"]),
            "main_reject_reasons": dict(summary["reasons"].most_common(5))}
    accepted = sum(s["kept"] for s in summaries.values())
    removed = sum(s["seen"] - s["kept"] for s in summaries.values())
    stage = {"stage": RESHARD_STAGE, "kind": RESHARD_STAGE, "role": "filter",
             "input": sum(s["seen"] for s in summaries.values()), "accepted_out": accepted, "rejected": removed,
             "errors": 0, "reasons": {"where": removed} if removed else {}, "busy_seconds": seconds,
             "gpu_seconds": 0.0, "gpus_reserved": 0.0, "seconds_per_accepted": seconds / accepted if accepted else None,
             "gpu_seconds_per_accepted": 0.0 if accepted else None, "cache": {"hits": 0, "misses": 0}}
    listed = [s for s in shards if s["count"]]
    return {
        **source,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": {"accepted": accepted, "rejected": sum(s["rejected"] for s in summaries.values()),
                   "categories": categories,
                   "shortfalls": {f"{c}/{s}": v for c, splits in categories.items() for s, v in splits.items()
                                  if v["shortfall"]}},
        "stages": [*source["stages"], stage],
        "shards": [{k: s[k] for k in ("path", "category", "split", "count", "rejected", "sha256", "bytes", "parquet",
                                      "parquet_sha256", "rejects", "image_format")} for s in listed],
        "rejects": [s["rejects"] for s in shards],
        "reshard": {"source": str(root.resolve()), "source_created_at": source.get("created_at"), "where": where,
                    "kept": accepted, "removed": removed},
    }


def _write_index(layout: OutputLayout, manifest: dict[str, Any], shards: list[dict[str, Any]]) -> None:
    listed = [s for s in shards if s["count"]]
    atomic_write_text(layout.sizes, json.dumps({s["path"]: s["count"] for s in listed}, indent=2))
    for category in sorted({s["category"] for s in shards}):
        sizes = {Path(s["path"]).name: s["count"] for s in listed if s["category"] == category}
        atomic_write_text(layout.root / "data" / category / "sizes.json", json.dumps(sizes, indent=2))
    atomic_write_text(layout.manifest, json.dumps(manifest, indent=2))


__all__ = ["RESHARD_STAGE", "WhereError", "reshard"]
