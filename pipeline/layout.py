"""Where everything of a run lives under its output folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.planning import WorkUnit


@dataclass(frozen=True)
class OutputLayout:
    root: Path

    # --- work units (the run's resumable state; not part of the published dataset) ---
    def unit_stem(self, unit: WorkUnit) -> Path:
        return self.root / "work" / unit.category / f"{unit.split}-{unit.index:05d}"

    def unit_tar(self, unit: WorkUnit) -> Path:
        return self.unit_stem(unit).with_suffix(".tar")

    def unit_index(self, unit: WorkUnit) -> Path:
        return self.unit_stem(unit).with_suffix(".parquet")

    def unit_stats(self, unit: WorkUnit) -> Path:
        stem = self.unit_stem(unit)
        return stem.with_name(f"{stem.name}_stats.json")

    def unit_is_complete(self, unit: WorkUnit) -> bool:
        return self.unit_stats(unit).is_file()

    def cache_file(self, stage_id: str, unit: WorkUnit) -> Path:
        return self.root / "cache" / stage_id / unit.category / f"{unit.split}-{unit.index:05d}.msgpack"

    # --- the dataset ---
    def shard_stem(self, category: str, split: str, index: int) -> str:
        """Path of a shard without extension, relative to the root."""
        return f"data/{category}/{split}-{index:05d}"

    def shard_tar(self, category: str, split: str, index: int) -> Path:
        return self.root / f"{self.shard_stem(category, split, index)}.tar"

    def shard_parquet(self, category: str, split: str, index: int) -> Path:
        return self.root / f"{self.shard_stem(category, split, index)}.parquet"

    def shard_stats(self, category: str, split: str, index: int) -> Path:
        return self.root / f"{self.shard_stem(category, split, index)}_stats.json"

    def rejects(self, category: str, split: str, index: int) -> Path:
        return self.root / "rejects" / category / f"{split}-{index:05d}.parquet"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def sizes(self) -> Path:
        return self.root / "sizes.json"

    @property
    def card(self) -> Path:
        return self.root / "README.md"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def run_info(self) -> Path:
        """Versions the run was made with, checked on resume."""
        return self.root / "work" / "run.json"

    @property
    def failed_units(self) -> Path:
        return self.root / "failed_units.json"
