"""Run stages in-process the way the engine does, for unit tests of single stages."""

from __future__ import annotations

from pipeline.config import StageSpec
from pipeline.planning import WorkUnit, derive_seed
from pipeline.record import SampleRecord
from pipeline.stage import RunContext
from pipeline.stage_runner import StageRunner, StageStats, build_stages, new_records

CONTEXT = RunContext(run_seed=0, provenance={"git_sha": "abc123"})


def unit_for(category: str, num_samples: int = 4, split: str = "train", first_position: int = 0) -> WorkUnit:
    return WorkUnit(category=category, split=split, index=0, first_position=first_position, num_samples=num_samples,
                    stream_seed=derive_seed(0, category, split))


def run_stages(specs: list[dict], records: list[SampleRecord] | None = None, unit: WorkUnit | None = None,
               out_dir=None, use_cache: bool = True) -> tuple[list[SampleRecord], dict[str, StageStats]]:
    """Run stage specs (as in a config's `stages:`) on ``records``, or on the new records of ``unit``."""
    unit = unit or unit_for(records[0].category if records else "SynthColor", len(records or []) or 4)
    records = records if records is not None else new_records(unit, CONTEXT)
    runner = StageRunner(build_stages([StageSpec.model_validate(s) for s in specs], CONTEXT, []), out_dir, use_cache)
    stats = runner.run(unit, records)
    return records, stats
