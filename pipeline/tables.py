"""The parquet tables of a dataset: one row per sample, with the record's fields and a column per score.

Nested fields are canonical JSON strings, so every shard parquet of a dataset has the same schema: the record
columns, then ``score/<name>`` for every score name in the dataset (null where a sample has none).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from pipeline.record import canonical_json_text

RECORD_COLUMNS = (
    ("key", pa.string()), ("category", pa.string()), ("split", pa.string()), ("seed", pa.int64()),
    ("seed_caption", pa.string()), ("caption", pa.string()), ("description", pa.string()),
    ("conversations", pa.string()), ("scores", pa.string()), ("provenance", pa.string()), ("metadata", pa.string()),
    ("status", pa.string()), ("reject_stage", pa.string()), ("reject_reason", pa.string()),
)
SCORE_PREFIX = "score/"
REJECTS_SCHEMA = pa.schema([
    ("key", pa.string()), ("category", pa.string()), ("split", pa.string()), ("reject_stage", pa.string()),
    ("reject_reason", pa.string()), ("record_json", pa.string()), ("image", pa.binary()),
])


def shard_schema(score_names: Iterable[str]) -> pa.Schema:
    return pa.schema([*RECORD_COLUMNS, *[(f"{SCORE_PREFIX}{name}", pa.float64()) for name in sorted(score_names)]])


def record_row(json_dict: dict[str, Any]) -> dict[str, Any]:
    """A record's JSON member as a table row: nested fields as JSON text, one float column per score."""
    row = {name: canonical_json_text(json_dict[name]) if isinstance(json_dict[name], (dict, list)) else json_dict[name]
           for name, _ in RECORD_COLUMNS}
    row.update({f"{SCORE_PREFIX}{entry['name']}": entry["value"] for entry in json_dict["scores"]})
    return row


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in order; missing score columns become nulls."""
    columns = [table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)
