"""Work units: one unit is one output shard, and carries the seed every sample of it derives from."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

SPLITS = ("train", "test")


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from its parts (Python's hash() is salted per process, so it is not used)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class WorkUnit:
    category: str
    split: str
    index: int
    num_samples: int
    seed: int

    @property
    def shard_stem(self) -> str:
        """Path of the shard without extension, relative to the output root."""
        return f"data/{self.category}/{self.split}-{self.index:05d}"

    @property
    def rejects_path(self) -> str:
        return f"rejects/{self.category}/{self.split}-{self.index:05d}.parquet"

    @property
    def unit_id(self) -> str:
        return f"{self.category}/{self.split}-{self.index:05d}"

    def sample_seed(self, position: int) -> int:
        return derive_seed(self.seed, position)

    def sample_key(self, position: int) -> str:
        return f"{self.category.lower()}_{self.split}_{self.index:05d}_{position:05d}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorkUnit:
        return cls(**data)


def plan_units(run_seed: int, category: str, split: str, num_samples: int, unit_size: int) -> list[WorkUnit]:
    """Split ``num_samples`` of one category and split into units of ``unit_size`` (the last may be smaller)."""
    if unit_size <= 0:
        raise ValueError(f"unit_size must be positive, got {unit_size}")
    units = []
    for index, start in enumerate(range(0, num_samples, unit_size)):
        units.append(
            WorkUnit(
                category=category,
                split=split,
                index=index,
                num_samples=min(unit_size, num_samples - start),
                seed=derive_seed(run_seed, category, split, index),
            )
        )
    return units
