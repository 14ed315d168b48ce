"""Run-wide decisions (dedup, top fraction) over the signatures every finished unit stored.

The signatures are streamed in key order (each split's units in position order, the splits merged by key),
so memory holds one unit per split plus what the deciding stage keeps (e.g. the LSH index of kept samples).
Stages decide in config order, each over the samples the ones before it kept.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

import pyarrow.parquet as pq

from pipeline.config import RunConfig, StageSpec
from pipeline.layout import OutputLayout
from pipeline.planning import WorkUnit
from pipeline.record import STATUS_REJECTED
from pipeline.stage import GlobalStage, RunContext
from pipeline.unit_writer import SIGNATURE_PREFIX


def global_specs(config: RunConfig) -> list[StageSpec]:
    return [spec for spec in config.stages if issubclass(spec.stage_class(), GlobalStage)]


def decide_globally(config: RunConfig, layout: OutputLayout, units: dict[str, list[WorkUnit]]) -> dict[str, tuple[str, str]]:
    """``key -> (stage id, reason)`` for every accepted sample a run-wide stage removes."""
    removed: dict[str, tuple[str, str]] = {}
    context = RunContext(run_seed=config.seed)
    for spec in global_specs(config):
        stage = spec.stage_class()(spec.stage_id, spec.typed_params(), context)
        streams = [_split_signatures(layout, split_units, spec.stage_id, removed) for split_units in units.values()]
        for key, reason in stage.decide(heapq.merge(*streams, key=lambda item: item[0])).items():
            removed[key] = (spec.stage_id, reason)
    return removed


def _split_signatures(layout: OutputLayout, units: list[WorkUnit], stage_id: str,
                      removed: dict[str, tuple[str, str]]) -> Iterator[tuple[str, bytes]]:
    column = f"{SIGNATURE_PREFIX}{stage_id}"
    for unit in units:
        path = layout.unit_index(unit)
        if column not in pq.read_schema(path).names:
            continue
        table = pq.read_table(path, columns=["key", "status", column]).to_pydict()
        for key, status, signature in zip(table["key"], table["status"], table[column], strict=True):
            if status != STATUS_REJECTED and signature is not None and key not in removed:
                yield key, signature
