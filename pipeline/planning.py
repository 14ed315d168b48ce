"""Planning the work: targets per category and split, work units, rounds of top-up, seeds and keys.

Every (category, split) is a stream of sample positions 0, 1, 2, ...; a sample's seed and key derive from the
run seed and its position alone, so the same config gives the same samples whatever the unit size. The
first round plans the target number of positions; when filters reject some, later rounds plan new positions
until the target of accepted samples is reached or ``max_attempts_factor`` times the target has been tried.
The plan depends only on counts that are themselves deterministic, so a resumed run plans the same units.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

SPLITS = ("train", "test")


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from its parts (Python's hash() is salted per process, so it is not used)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def sample_key(category: str, split: str, position: int) -> str:
    """Keys sort in position order within a category and split."""
    return f"{category.lower()}_{split}_{position:07d}"


@dataclass(frozen=True)
class WorkUnit:
    """What one task or actor call holds: ``num_samples`` consecutive positions of one category and split."""

    category: str
    split: str
    index: int  # within the category and split, counting across rounds
    first_position: int
    num_samples: int
    stream_seed: int  # of the category and split; sample seeds derive from it and the position
    round: int = 0

    @property
    def unit_id(self) -> str:
        return f"{self.category}/{self.split}-{self.index:05d}"

    @property
    def positions(self) -> range:
        return range(self.first_position, self.first_position + self.num_samples)

    def sample_seed(self, position: int) -> int:
        return derive_seed(self.stream_seed, position)

    def sample_key(self, position: int) -> str:
        return sample_key(self.category, self.split, position)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorkUnit:
        return cls(**data)


@dataclass(frozen=True)
class SplitTarget:
    category: str
    split: str
    target: int  # accepted samples wanted
    max_positions: int  # attempts allowed

    @property
    def name(self) -> str:
        return f"{self.category}/{self.split}"


@dataclass(frozen=True)
class SplitTally:
    """Where a category and split stands after the units planned so far."""

    positions: int  # planned (all complete when a round is tallied)
    accepted: int
    units: int

    @property
    def acceptance(self) -> float:
        return self.accepted / self.positions if self.positions else 0.0


def split_targets(categories: dict[str, dict[str, int]], max_attempts_factor: float) -> list[SplitTarget]:
    targets = []
    for category, sizes in categories.items():
        for split in SPLITS:
            n = sizes.get(split, 0)
            if n:
                targets.append(SplitTarget(category, split, n, max(n, math.ceil(n * max_attempts_factor))))
    return targets


def units_for_positions(target: SplitTarget, run_seed: int, first_position: int, count: int, first_index: int,
                        unit_size: int, round_number: int) -> list[WorkUnit]:
    if unit_size <= 0:
        raise ValueError(f"unit_size must be positive, got {unit_size}")
    stream_seed = derive_seed(run_seed, target.category, target.split)
    units = []
    for offset, start in enumerate(range(first_position, first_position + count, unit_size)):
        units.append(WorkUnit(target.category, target.split, first_index + offset, start,
                              min(unit_size, first_position + count - start), stream_seed, round_number))
    return units


def top_up_count(target: SplitTarget, tally: SplitTally) -> int:
    """New positions to plan for a short category and split: the deficit over the acceptance seen so far."""
    deficit = target.target - tally.accepted
    remaining = target.max_positions - tally.positions
    if deficit <= 0 or remaining <= 0:
        return 0
    if tally.accepted == 0:
        return remaining
    return min(remaining, max(deficit, math.ceil(deficit / tally.acceptance)))


def plan_round(targets: list[SplitTarget], tallies: dict[str, SplitTally], run_seed: int, unit_size: int,
               round_number: int) -> list[WorkUnit]:
    """The units of round ``round_number``: the targets themselves in round 0, top-ups after."""
    units = []
    for target in targets:
        tally = tallies.get(target.name, SplitTally(0, 0, 0))
        count = target.target if round_number == 0 else top_up_count(target, tally)
        if count:
            units += units_for_positions(target, run_seed, tally.positions, count, tally.units, unit_size, round_number)
    return units
