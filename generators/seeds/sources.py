"""Caption pools from a text, jsonl or parquet file, a local Hugging Face dataset folder, or built-in topics.

A pool is a tuple of caption strings in file order plus the sha256 of that content, which goes into
provenance. Errors name the file and the field at fault.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

TOPIC_DIR = Path(__file__).parent / "topics"
SourceKind = Literal["builtin", "text", "jsonl", "parquet", "hf_dataset"]


def builtin_topics() -> list[str]:
    return sorted(p.stem for p in TOPIC_DIR.glob("*.txt"))


@lru_cache(maxsize=16)
def load_pool(kind: SourceKind, path: str | None, field: str, split: str, topics: tuple[str, ...]
              ) -> tuple[tuple[str, ...], str]:
    """The captions of a source, and the sha256 of the pool."""
    captions = tuple(c.strip() for c in _read(kind, path, field, split, topics) if c and c.strip())
    if not captions:
        raise ValueError(f"seed caption source {kind} {path or ', '.join(topics) or 'builtin'} holds no caption")
    digest = hashlib.sha256("\n".join(captions).encode("utf-8")).hexdigest()
    return captions, digest


def _read(kind: SourceKind, path: str | None, field: str, split: str, topics: tuple[str, ...]) -> list[str]:
    if kind == "builtin":
        names = list(topics) or builtin_topics()
        unknown = [n for n in names if not (TOPIC_DIR / f"{n}.txt").is_file()]
        if unknown:
            raise ValueError(f"unknown built-in seed topics {unknown}; known: {', '.join(builtin_topics())}")
        return [line for name in names for line in _text_lines(TOPIC_DIR / f"{name}.txt")]
    if not path:
        raise ValueError(f"seed caption source {kind!r} needs a `path`")
    file = Path(path).expanduser()
    if not file.exists():
        raise FileNotFoundError(f"seed caption {kind} source not found: {file}")
    if kind == "text":
        return _text_lines(file)
    if kind == "jsonl":
        return _jsonl_field(file, field)
    if kind == "parquet":
        return _parquet_column(file, field)
    return _hf_dataset_column(file, field, split)


def _text_lines(file: Path) -> list[str]:
    return [line for line in file.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")]


def _jsonl_field(file: Path, field: str) -> list[str]:
    captions = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{file}:{number}: not JSON ({error})") from None
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise ValueError(f"{file}:{number}: no string field {field!r}")
        captions.append(row[field])
    return captions


def _parquet_column(file: Path, field: str) -> list[str]:
    import pyarrow.parquet as pq

    schema = pq.read_schema(file)
    if field not in schema.names:
        raise ValueError(f"{file}: no column {field!r} (columns: {', '.join(schema.names)})")
    return [v for v in pq.read_table(file, columns=[field]).column(field).to_pylist() if isinstance(v, str)]


def _hf_dataset_column(folder: Path, field: str, split: str) -> list[str]:
    """A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or one of data files."""
    import datasets

    if (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(folder))
        dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    else:
        dataset = datasets.load_dataset(str(folder), split=split)
    if field not in dataset.column_names:
        raise ValueError(f"{folder}: no column {field!r} (columns: {', '.join(dataset.column_names)})")
    return [v for v in dataset[field] if isinstance(v, str)]
