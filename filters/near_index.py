"""Near-neighbour search for greedy near-duplicate removal in key order.

Neither compares all pairs:

- ``hamming_pairs``: every pair of bit strings within Hamming distance d, exactly, by multi-index hashing
  (split the bits into bands; by the pigeonhole principle two strings within d are close on some band),
  vectorised over all strings at once (they are small: 14 bytes per image).
- ``CosineLSHIndex``: holding only the vectors kept so far, unit vectors with cosine >= t, by random-hyperplane LSH (``tables`` tables of ``bits``
  sign bits each); every candidate is checked exactly, so there are no false positives, and a pair at the
  threshold is missed with probability (1 - (1 - theta/pi)^bits)^tables (about 2% at cosine 0.95 with the
  defaults of 24 tables of 18 bits, far less for closer pairs). The hyperplanes come from a fixed seed: the result is a pure
  function of the items in key order.
"""

from __future__ import annotations

import itertools

import numpy as np


def hamming_pairs(codes: np.ndarray, num_bits: int, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i, j), j < i, of ``codes`` (uint64, ``num_bits`` used) within ``max_distance`` bits, exactly,
    as arrays (i, j, distance), without comparing all pairs.

    With m bands, two codes within d differ in at most d // m bits of some band (pigeonhole); m is chosen so
    that this radius is at most 1, and each band is matched, vectorised, at its exact value and at every
    value one bit away, by sorting (n log n per probe, 1 + band width probes per band)."""
    if not 0 <= max_distance < num_bits:
        raise ValueError(f"max_distance must be in [0, {num_bits}), got {max_distance}")
    codes = np.asarray(codes, dtype=np.uint64)
    n = len(codes)
    bands = max(1, (max_distance + 2) // 2)
    radius = max_distance // bands
    edges = np.linspace(0, num_bits, bands + 1).astype(int)
    found = []
    index = np.arange(n)
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        width = int(end - start)
        values = (codes >> np.uint64(num_bits - end)) & np.uint64((1 << width) - 1)
        order = np.argsort(values, kind="stable")
        ordered = values[order]
        flips = [0] + ([1 << b for b in range(width)] if radius else [])
        for flip in flips:
            probe = values ^ np.uint64(flip)
            low, high = np.searchsorted(ordered, probe, "left"), np.searchsorted(ordered, probe, "right")
            counts = high - low
            if not counts.any():
                continue
            queries = np.repeat(index, counts)
            starts = np.repeat(low - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
            partners = order[np.arange(len(queries)) + starts]
            earlier = partners < queries
            found.append(np.stack([queries[earlier], partners[earlier]], axis=1))
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    pairs = np.unique(np.concatenate(found), axis=0)
    distances = np.bitwise_count(codes[pairs[:, 0]] ^ codes[pairs[:, 1]]).astype(np.int64)
    keep = distances <= max_distance
    return pairs[keep, 0], pairs[keep, 1], distances[keep]


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
