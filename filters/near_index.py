"""Indexes for greedy near-duplicate removal in key order, holding only the samples kept so far.

Each answers "is this item near any kept one?" without comparing it with all of them:

- ``HammingIndex``: bit strings within Hamming distance d, exactly, by multi-index hashing (split the bits
  into d+1 bands; by the pigeonhole principle two strings within d agree on at least one band).
- ``CosineLSHIndex``: unit vectors with cosine >= t, by random-hyperplane LSH (``tables`` tables of ``bits``
  sign bits each); every candidate is checked exactly, so there are no false positives, and a pair at the
  threshold is missed with probability (1 - (1 - theta/pi)^bits)^tables (about 2% at cosine 0.95 with the
  defaults, far less for closer pairs). The hyperplanes come from a fixed seed: the result is a pure
  function of the items in key order.
"""

from __future__ import annotations

import numpy as np


class HammingIndex:
    def __init__(self, num_bits: int, max_distance: int) -> None:
        if not 0 <= max_distance < num_bits:
            raise ValueError(f"max_distance must be in [0, {num_bits}), got {max_distance}")
        self.max_distance = max_distance
        edges = np.linspace(0, num_bits, max_distance + 2).astype(int)
        self.bands = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
        self.tables: list[dict[bytes, list[int]]] = [{} for _ in self.bands]
        self.bits: list[np.ndarray] = []
        self.labels: list[str] = []

    def within(self, bits: np.ndarray) -> list[tuple[str, int]]:
        """Every kept string within ``max_distance`` as (label, distance), closest first, then by label."""
        candidates = {i for table, (a, b) in zip(self.tables, self.bands, strict=True)
                      for i in table.get(bits[a:b].tobytes(), ())}
        found = []
        for index in candidates:
            distance = int(np.count_nonzero(self.bits[index] != bits))
            if distance <= self.max_distance:
                found.append((distance, index))
        return [(self.labels[i], d) for d, i in sorted(found)]

    def add(self, label: str, bits: np.ndarray) -> None:
        index = len(self.labels)
        self.labels.append(label)
        self.bits.append(bits)
        for table, (a, b) in zip(self.tables, self.bands, strict=True):
            table.setdefault(bits[a:b].tobytes(), []).append(index)


class CosineLSHIndex:
    def __init__(self, dim: int, threshold: float, tables: int = 20, bits: int = 16, seed: int = 0) -> None:
        if not 1 <= bits <= 62:
            raise ValueError(f"bits per table must be in [1, 62], got {bits}")
        self.threshold = threshold
        self.planes = np.random.default_rng(seed).standard_normal((dim, tables * bits)).astype(np.float32)
        self.tables, self.num_bits = tables, bits
        self.weights = (1 << np.arange(bits, dtype=np.int64))
        self.buckets: list[dict[int, list[int]]] = [{} for _ in range(tables)]
        self.vectors = np.zeros((1024, dim), dtype=np.float16)
        self.labels: list[str] = []

    def codes(self, vector: np.ndarray) -> np.ndarray:
        signs = (vector.astype(np.float32) @ self.planes) > 0
        return signs.reshape(self.tables, self.num_bits).astype(np.int64) @ self.weights

    def nearest(self, vector: np.ndarray, codes: np.ndarray) -> tuple[str, float] | None:
        """The label and cosine of the most similar kept vector at or above the threshold, if any."""
        found = [bucket[int(code)] for bucket, code in zip(self.buckets, codes, strict=True) if int(code) in bucket]
        if not found:
            return None
        candidates = np.unique(np.concatenate([np.asarray(f, dtype=np.int64) for f in found]))
        cosines = self.vectors[candidates].astype(np.float32) @ vector.astype(np.float32)
        best = int(np.argmax(cosines))
        if cosines[best] < self.threshold:
            return None
        return self.labels[int(candidates[best])], float(cosines[best])

    def add(self, label: str, vector: np.ndarray, codes: np.ndarray) -> None:
        index = len(self.labels)
        if index == len(self.vectors):
            self.vectors = np.concatenate([self.vectors, np.zeros_like(self.vectors)])
        self.vectors[index] = vector
        self.labels.append(label)
        for bucket, code in zip(self.buckets, codes, strict=True):
            bucket.setdefault(int(code), []).append(index)
