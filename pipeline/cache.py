"""A content-hash cache of model calls, stored with the output: one file per stage and work unit.

A call's key hashes the stage's fingerprint (model id and revision, prompt template hash, sampling settings,
code version) with the sample's seed and the call's input. Replaying the cache gives back exactly what the
model returned, so a resumed run equals an uninterrupted one even for models that are not deterministic (a
GPU LLM sampling at temperature > 0). Files are written atomically when a stage finishes a unit, so the
cache works on a cluster's shared storage without a database; a killed unit loses at most its own calls.

Values are msgpack: strings, numbers, bytes, lists, dicts, and numpy arrays (stored losslessly).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from pipeline.fileio import atomic_write_bytes
from pipeline.record import canonical_json_text

logger = logging.getLogger(__name__)

_NDARRAY_EXT = 1
CACHE_SUFFIX = ".msgpack"


def _pack_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        payload = msgpack.packb([value.dtype.str, list(value.shape), np.ascontiguousarray(value).tobytes()])
        return msgpack.ExtType(_NDARRAY_EXT, payload)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"cannot cache a value of type {type(value).__name__}")


def _unpack_ext(code: int, data: bytes) -> Any:
    if code == _NDARRAY_EXT:
        dtype, shape, raw = msgpack.unpackb(data)
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
    return msgpack.ExtType(code, data)


def content_digest(value: Any) -> Any:
    """A JSON-able stand-in for ``value`` that changes whenever its content does (arrays and bytes by hash)."""
    if isinstance(value, dict):
        return {str(k): content_digest(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [content_digest(v) for v in value]
    if isinstance(value, np.ndarray):
        raw = np.ascontiguousarray(value).tobytes()
        return {"ndarray": [value.dtype.str, list(value.shape), hashlib.sha256(raw).hexdigest()]}
    if isinstance(value, bytes):
        return {"bytes": hashlib.sha256(value).hexdigest()}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def call_key(fingerprint: dict[str, Any], seed: int, request: Any) -> str:
    payload = canonical_json_text({"fingerprint": content_digest(fingerprint), "seed": seed,
                                   "input": content_digest(request)})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class CallCache:
    """The cached calls of one stage on one work unit."""

    def __init__(self, path: Path | None, fingerprint: dict[str, Any], enabled: bool = True) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.enabled = enabled and path is not None
        self.hits = 0
        self.misses = 0
        self._stored: dict[str, Any] | None = None
        self._used: dict[str, Any] = {}

    def map(self, requests: Sequence[tuple[int, Any]], compute: Callable[[list[Any]], list[Any]]) -> list[Any]:
        """Results for ``(seed, request)`` pairs: replayed where cached, else from one ``compute`` call
        on the missing requests (in order), which must return one result per request."""
        keys = [call_key(self.fingerprint, seed, request) for seed, request in requests]
        stored = self._load()
        missing = [i for i, key in enumerate(keys) if key not in stored and key not in self._used]
        if missing:
            computed = compute([requests[i][1] for i in missing])
            if len(computed) != len(missing):
                raise ValueError(f"a model call returned {len(computed)} results for {len(missing)} requests")
            for index, value in zip(missing, computed, strict=True):
                self._used[keys[index]] = value
        results = []
        for key in keys:
            if key in self._used:
                results.append(self._used[key])
            else:
                self._used[key] = stored[key]
                results.append(stored[key])
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return results

    def _load(self) -> dict[str, Any]:
        if self._stored is None:
            self._stored = {}
            if self.enabled and self.path.is_file():
                try:
                    self._stored = msgpack.unpackb(self.path.read_bytes(), ext_hook=_unpack_ext, strict_map_key=False)
                except (ValueError, msgpack.UnpackException) as error:
                    logger.warning("ignoring unreadable cache file %s (%s); its calls are made again", self.path, error)
        return self._stored

    def save(self) -> None:
        """Write the calls this unit used (replayed or new); older entries of other fingerprints are dropped."""
        if not self.enabled or not self.misses:
            return
        atomic_write_bytes(self.path, msgpack.packb(self._used, default=_pack_default, use_bin_type=True))


def clear_cache(root: Path, stage_id: str | None = None) -> int:
    """Delete the cached calls of one stage, or of all; returns the number of files removed."""
    folder = root / "cache" / stage_id if stage_id else root / "cache"
    files = [p for p in folder.rglob(f"*{CACHE_SUFFIX}")] if folder.exists() else []
    for path in files:
        path.unlink()
    return len(files)
