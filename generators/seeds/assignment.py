"""Which pool caption a sample position gets: a seeded bijection of positions onto the pool.

Per category, a permutation of the pool (seeded by the run seed and the category) is walked from its start
by train positions and from its end by test positions, so the two splits share no seed caption while
``train + test`` positions fit in the pool; beyond that, positions wrap around (``cycle`` > 0).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pipeline.planning import derive_seed


@lru_cache(maxsize=64)
def _permutation(pool_size: int, run_seed: int, category: str, pool_digest: str) -> np.ndarray:
    return np.random.default_rng(derive_seed(run_seed, "seed_captions", category, pool_digest)).permutation(pool_size)


def pool_index(pool_size: int, pool_digest: str, run_seed: int, category: str, split: str, position: int
               ) -> tuple[int, int]:
    """(index into the pool, cycle) of a sample position."""
    slot = position if split == "train" else pool_size - 1 - (position % pool_size) + (position // pool_size) * pool_size
    cycle, offset = divmod(slot, pool_size)
    return int(_permutation(pool_size, run_seed, category, pool_digest)[offset]), cycle
