"""Indexes for greedy near-duplicate removal in key order, holding only the samples kept so far.

Each answers "is this item near any kept one?" without comparing it with all of them:

- ``HammingIndex``: bit strings within Hamming distance d, exactly, by multi-index hashing (split the bits
  into bands; by the pigeonhole principle two strings within d are close on at least one band).
- ``CosineLSHIndex``: unit vectors with cosine >= t, by random-hyperplane LSH (``tables`` tables of ``bits``
  sign bits each); every candidate is checked exactly, so there are no false positives, and a pair at the
  threshold is missed with probability (1 - (1 - theta/pi)^bits)^tables (about 2% at cosine 0.95 with the
  defaults of 24 tables of 18 bits, far less for closer pairs). The hyperplanes come from a fixed seed: the result is a pure
  function of the items in key order.
"""

from __future__ import annotations

import itertools

import numpy as np


class HammingIndex:
    """Bit strings as Python ints. With m bands, two strings within distance d differ in at most d // m bits
    of some band (pigeonhole), so each band is probed at every key within that radius of the query's;
    m is chosen so the radius is at most 1, which keeps bands long (few chance collisions) and probes few."""

    def __init__(self, num_bits: int, max_distance: int) -> None:
        if not 0 <= max_distance < num_bits:
            raise ValueError(f"max_distance must be in [0, {num_bits}), got {max_distance}")
        self.max_distance = max_distance
        bands = max(1, (max_distance + 2) // 2)
        self.radius = max_distance // bands
        edges = np.linspace(0, num_bits, bands + 1).astype(int)
        self.bands = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
        self.num_bits = num_bits
        self.tables: list[dict[int, list[int]]] = [{} for _ in self.bands]
        self.bits: list[int] = []
        self.labels: list[str] = []

    def _band(self, bits: int, band: tuple[int, int]) -> int:
        start, end = band
        return (bits >> (self.num_bits - end)) & ((1 << (end - start)) - 1)

    def _probes(self, value: int, width: int) -> list[int]:
        probes = [value]
        if self.radius >= 1:
            probes += [value ^ (1 << i) for i in range(width)]
        return probes

    def within(self, bits: int) -> list[tuple[str, int]]:
        """Every kept string within ``max_distance`` as (label, distance), closest first, then by label."""
        candidates = set()
        for table, band in zip(self.tables, self.bands, strict=True):
            for probe in self._probes(self._band(bits, band), band[1] - band[0]):
                candidates.update(table.get(probe, ()))
        found = sorted((d, i) for i in candidates if (d := (self.bits[i] ^ bits).bit_count()) <= self.max_distance)
        return [(self.labels[i], d) for d, i in found]

    def add(self, label: str, bits: int) -> None:
        index = len(self.labels)
        self.labels.append(label)
        self.bits.append(bits)
        for table, band in zip(self.tables, self.bands, strict=True):
            table.setdefault(self._band(bits, band), []).append(index)


class CosineLSHIndex:
    def __init__(self, dim: int, threshold: float, tables: int = 24, bits: int = 18, seed: int = 0) -> None:
        if not 1 <= bits <= 62:
            raise ValueError(f"bits per table must be in [1, 62], got {bits}")
        self.threshold = threshold
        self.planes = np.random.default_rng(seed).standard_normal((dim, tables * bits)).astype(np.float32)
        self.tables, self.num_bits = tables, bits
        self.weights = (1 << np.arange(bits, dtype=np.int64))
        self.buckets: list[dict[int, list[int]]] = [{} for _ in range(tables)]
        self.vectors = np.zeros((1024, dim), dtype=np.float16)
        self.labels: list[str] = []

    def codes(self, vectors: np.ndarray) -> np.ndarray:
        """The bucket of each table for one vector (shape (tables,)) or for a batch (shape (n, tables))."""
        signs = (vectors.astype(np.float32) @ self.planes) > 0
        return signs.reshape(*vectors.shape[:-1], self.tables, self.num_bits).astype(np.int64) @ self.weights

    def nearest(self, vector: np.ndarray, codes: np.ndarray) -> tuple[str, float] | None:
        """The label and cosine of the most similar kept vector at or above the threshold, if any."""
        found = [bucket.get(code) for bucket, code in zip(self.buckets, codes.tolist(), strict=True)]
        candidates = np.fromiter(itertools.chain.from_iterable(f for f in found if f), dtype=np.int64)
        if not len(candidates):
            return None
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
        for bucket, code in zip(self.buckets, codes.tolist(), strict=True):
            bucket.setdefault(code, []).append(index)
