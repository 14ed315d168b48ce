"""Writes one work unit as a shard: tar + parquet + rejects, then ``_stats.json`` last to mark it complete.

Every file is written to a temporary name and renamed, so a killed run leaves either a complete file or
none; a unit is complete iff its stats file exists.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.fileio import atomic_path, atomic_write_text, sha256_file
from pipeline.record import STATUS_ACCEPTED, SampleRecord, canonical_json_text
from pipeline.units import WorkUnit

SAMPLE_MEMBERS = ("jpg", "json", "txt")
REJECTS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("category", pa.string()),
        ("split", pa.string()),
        ("reject_stage", pa.string()),
        ("reject_reason", pa.string()),
        ("record_json", pa.string()),
    ]
)
# Fixed member metadata so the same records always give the same tar bytes.
_MEMBER_MTIME = 0
_MEMBER_MODE = 0o644


@dataclass(frozen=True)
class OutputLayout:
    root: Path

    def shard_tar(self, unit: WorkUnit) -> Path:
        return self.root / f"{unit.shard_stem}.tar"

    def shard_parquet(self, unit: WorkUnit) -> Path:
        return self.root / f"{unit.shard_stem}.parquet"

    def shard_stats(self, unit: WorkUnit) -> Path:
        return self.root / f"{unit.shard_stem}_stats.json"

    def rejects(self, unit: WorkUnit) -> Path:
        return self.root / unit.rejects_path

    def is_complete(self, unit: WorkUnit) -> bool:
        return self.shard_stats(unit).is_file()

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def sizes(self) -> Path:
        return self.root / "sizes.json"

    @property
    def card(self) -> Path:
        return self.root / "README.md"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    def stats_files(self) -> list[Path]:
        return sorted((self.root / "data").glob("*/*_stats.json"))


def canonical_json(data: Any) -> bytes:
    return canonical_json_text(data).encode("utf-8")


def text_statistics(record: SampleRecord) -> dict[str, float]:
    """Scores every record gets from the writer, so ``scores`` is never empty (an empty first list would
    fix the Hugging Face feature type as a list of nulls)."""
    return {
        "text/caption_words": float(len(record.caption.split())),
        "text/description_words": float(len(record.description.split())),
        "text/qa_turns": float(len(record.conversations) // 2),
    }


def write_unit(layout: OutputLayout, unit: WorkUnit, records: list[SampleRecord]) -> dict[str, Any]:
    """Write the unit's shard files and return its stats (also written, last, as ``_stats.json``)."""
    accepted = [r for r in records if not r.is_rejected]
    rejected = [r for r in records if r.is_rejected]
    _check_unit_records(unit, records, accepted)
    for record in records:
        record.scores.update(text_statistics(record))
    for record in accepted:
        record.status = STATUS_ACCEPTED

    json_dicts = [r.to_json_dict() for r in accepted]
    tar_path = layout.shard_tar(unit)
    with atomic_path(tar_path) as temp:
        _write_tar(temp, accepted, json_dicts)
    parquet_path = layout.shard_parquet(unit)
    with atomic_path(parquet_path) as temp:
        pq.write_table(_records_table(json_dicts), temp)
    rejects_path = layout.rejects(unit)
    with atomic_path(rejects_path) as temp:
        pq.write_table(_rejects_table(rejected), temp)

    stats = {
        "unit": unit.to_dict(),
        "shard": tar_path.name,
        "path": str(tar_path.relative_to(layout.root)),
        "count": len(accepted),
        "rejected": len(rejected),
        "reject_reasons": _reject_reasons(rejected),
        "sha256": sha256_file(tar_path),
        "bytes": tar_path.stat().st_size,
        "parquet_sha256": sha256_file(parquet_path),
        "score_means": _score_means(accepted),
    }
    atomic_write_text(layout.shard_stats(unit), json.dumps(stats, indent=2, sort_keys=True))
    return stats


def _check_unit_records(unit: WorkUnit, records: list[SampleRecord], accepted: list[SampleRecord]) -> None:
    keys = Counter(r.key for r in records)
    duplicates = [k for k, n in keys.items() if n > 1]
    if duplicates:
        raise ValueError(f"unit {unit.unit_id}: duplicate sample keys {duplicates[:5]}")
    for record in accepted:
        if record.image is None:
            raise ValueError(f"unit {unit.unit_id}: accepted sample {record.key} has no image")
        if (record.category, record.split) != (unit.category, unit.split):
            raise ValueError(f"unit {unit.unit_id}: sample {record.key} belongs to {record.category}/{record.split}")


def _write_tar(path: Path, records: list[SampleRecord], json_dicts: list[dict[str, Any]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for record, json_dict in zip(records, json_dicts, strict=True):
            members = {
                "jpg": record.image,
                "json": canonical_json(json_dict),
                "txt": record.text().encode("utf-8"),
            }
            for extension in SAMPLE_MEMBERS:
                _add_member(tar, f"{record.key}.{extension}", members[extension])


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _MEMBER_MTIME
    info.mode = _MEMBER_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _records_table(json_dicts: list[dict[str, Any]]) -> pa.Table:
    """One row per sample: key plus every JSON field, and each score as its own float column.

    Nested fields are canonical JSON strings, which keeps one schema across shards and categories
    whatever they hold; ``score/<name>`` columns let thresholds be chosen later without opening tars.
    """
    rows = []
    for json_dict in json_dicts:
        row: dict[str, Any] = {}
        for name, value in json_dict.items():
            row[name] = canonical_json_text(value) if isinstance(value, (dict, list)) else value
        row.update({f"score/{entry['name']}": entry["value"] for entry in json_dict["scores"]})
        rows.append(row)
    if not rows:
        return pa.table({"key": pa.array([], pa.string())})
    columns = list(rows[0]) + sorted({c for row in rows for c in row} - set(rows[0]))
    return pa.table({c: [row.get(c) for row in rows] for c in columns})


def _rejects_table(records: list[SampleRecord]) -> pa.Table:
    rows = [
        {
            "key": r.key,
            "category": r.category,
            "split": r.split,
            "reject_stage": r.reject_stage,
            "reject_reason": r.reject_reason,
            "record_json": canonical_json(r.to_json_dict()).decode(),
        }
        for r in records
    ]
    return pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA)


def _reject_reasons(records: list[SampleRecord]) -> dict[str, dict[str, int]]:
    by_stage: dict[str, Counter] = {}
    for record in records:
        # The reason's text before any ':' is its kind; details after it vary per sample.
        kind = record.reject_reason.split(":", 1)[0]
        by_stage.setdefault(record.reject_stage, Counter())[kind] += 1
    return {stage: dict(sorted(counts.items())) for stage, counts in sorted(by_stage.items())}


def _score_means(records: list[SampleRecord]) -> dict[str, float]:
    totals: Counter = Counter()
    counts: Counter = Counter()
    for record in records:
        for name, value in record.scores.items():
            totals[name] += value
            counts[name] += 1
    return {name: totals[name] / counts[name] for name in sorted(totals)}
