"""The CPU writer step: encodes a finished unit's images once and writes its files under ``work/``.

A unit's files are the resumable state of a run, not the dataset: ``<unit>.tar`` holds the accepted
samples' members (the image encoded in the configured format, the JSON record, the text), ``<unit>.parquet``
indexes every record (accepted or rejected, with its reason, JSON and where its members lie in the tar),
and ``<unit>_stats.json``, written last, marks the unit complete. Shards are assembled from these once the
accepted set is decided (see ``shard_writer``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import DatasetConfig
from pipeline.fileio import atomic_path, atomic_write_bytes, atomic_write_text
from pipeline.images import encode_image
from pipeline.layout import OutputLayout
from pipeline.planning import WorkUnit
from pipeline.record import STATUS_ACCEPTED, SampleRecord, canonical_json_text
from pipeline.stage_runner import StageStats
from pipeline.tables import record_row, shard_schema
from pipeline.tar_members import end_of_archive, member_bytes

WRITER_STAGE = "writer"
SIGNATURE_PREFIX = "signature/"
# Besides the record columns and the unit's score columns (see pipeline.tables):
UNIT_INDEX_COLUMNS = [
    ("position", pa.int64()),
    ("record_json", pa.string()),
    ("tar_offset", pa.int64()),  # of the sample's first member in the unit tar; null for rejects
    ("tar_size", pa.int64()),  # of all its members
    ("image", pa.binary()),  # a reject's encoded image, when rejects keep theirs
]


def text_statistics(record: SampleRecord) -> dict[str, float]:
    """Scores every record gets from the writer, so ``scores`` is never empty (an empty first list would
    fix the Hugging Face feature type as a list of nulls)."""
    return {
        "text/caption_words": float(len(record.caption.split())),
        "text/description_words": float(len(record.description.split())),
        "text/qa_turns": float(len(record.conversations) // 2),
    }


def write_unit(layout: OutputLayout, unit: WorkUnit, records: list[SampleRecord],
               stage_stats: dict[str, StageStats], dataset: DatasetConfig) -> dict[str, Any]:
    """Write the unit's files and return its stats (also written, last, as ``_stats.json``)."""
    start = time.perf_counter()
    expected = [unit.sample_key(p) for p in unit.positions]
    if [r.key for r in records] != expected:
        raise ValueError(f"unit {unit.unit_id}: stages must keep the unit's records in order, got keys "
                         f"{[r.key for r in records][:3]}... for {expected[:3]}...")
    encoded = {}
    for record in records:
        record.scores.update(text_statistics(record))
        if record.is_rejected:
            continue
        if record.image is None:
            record.reject(WRITER_STAGE, "missing_image: no stage produced an image")
            continue
        try:
            encoded[record.key] = encode_image(record.image, dataset.image_format, dataset.image_quality)
        except Exception as error:
            record.reject_with_error(WRITER_STAGE, error)
    for record in records:
        if not record.is_rejected:
            record.status = STATUS_ACCEPTED

    tar = bytearray()
    rows = []
    for position, record in zip(unit.positions, records, strict=True):
        json_dict = record.to_json_dict()
        row = {**record_row(json_dict), "position": position, "record_json": canonical_json_text(json_dict),
               "tar_offset": None, "tar_size": None, "image": None,
               **{f"{SIGNATURE_PREFIX}{stage_id}": value for stage_id, value in record.signatures.items()}}
        if record.is_rejected:
            if dataset.keep_reject_images and record.image is not None:
                row["image"] = _encode_quietly(record, dataset)
        else:
            members = (member_bytes(f"{record.key}.{dataset.image_format}", encoded[record.key])
                       + member_bytes(f"{record.key}.json", row["record_json"].encode("utf-8"))
                       + member_bytes(f"{record.key}.txt", record.text().encode("utf-8")))
            row["tar_offset"], row["tar_size"] = len(tar), len(members)
            tar += members
        rows.append(row)
    tar += end_of_archive(len(tar))
    atomic_write_bytes(layout.unit_tar(unit), bytes(tar))
    score_names = sorted({name for r in records for name in r.scores})
    signature_ids = sorted({stage_id for r in records for stage_id in r.signatures})
    schema = pa.schema([*shard_schema(score_names), *UNIT_INDEX_COLUMNS,
                        *[(f"{SIGNATURE_PREFIX}{s}", pa.binary()) for s in signature_ids]])
    with atomic_path(layout.unit_index(unit)) as temp:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), temp)

    accepted = [r for r in records if not r.is_rejected]
    writer = StageStats(records_in=len(encoded) + sum(1 for r in records if r.reject_stage == WRITER_STAGE),
                        rejected=sum(1 for r in records if r.reject_stage == WRITER_STAGE),
                        errors=sum(1 for r in records if r.reject_stage == WRITER_STAGE and r.is_error),
                        busy_seconds=time.perf_counter() - start)
    stats = {
        "unit": unit.to_dict(),
        "samples": len(records),
        "accepted": len(accepted),
        "rejected": len(records) - len(accepted),
        "errors": sum(1 for r in records if r.is_error),
        "reject_reasons": reject_reasons(records),
        "error_examples": error_examples(records),
        "score_names": sorted({name for r in accepted for name in r.scores}),
        "stages": {**{k: v.to_dict() for k, v in stage_stats.items()}, WRITER_STAGE: writer.to_dict()},
    }
    atomic_write_text(layout.unit_stats(unit), json.dumps(stats, indent=2, sort_keys=True))
    return stats


def _encode_quietly(record: SampleRecord, dataset: DatasetConfig) -> bytes | None:
    try:
        return encode_image(record.image, dataset.image_format, dataset.image_quality)
    except Exception:  # a reject whose image cannot be encoded keeps its reason, without the image
        return None


def reason_kind(reason: str) -> str:
    """The text of a reason before its first ':' (``error:`` reasons keep the exception type)."""
    if reason.startswith("error:"):
        return ":".join(reason.split(":", 2)[:2])
    return reason.split(":", 1)[0]


def reject_reasons(records: list[SampleRecord]) -> dict[str, dict[str, int]]:
    by_stage: dict[str, Counter] = {}
    for record in records:
        if record.is_rejected:
            by_stage.setdefault(record.reject_stage, Counter())[reason_kind(record.reject_reason)] += 1
    return {stage: dict(sorted(counts.items())) for stage, counts in sorted(by_stage.items())}


def error_examples(records: list[SampleRecord], limit: int = 3) -> list[dict[str, str]]:
    return [{"key": r.key, "stage": r.reject_stage, "reason": r.reject_reason} for r in records if r.is_error][:limit]
