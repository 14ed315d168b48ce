"""Stages defined outside the project's packages, loaded through the config's `plugins` list."""

import itertools
import os

from pydantic import Field

from pipeline.record import SampleRecord
from pipeline.stage import Filter, Stage, StageParams, register_stage
from pipeline.units import WorkUnit

_instances = itertools.count()


class LengthModelParams(StageParams):
    min_words: int = Field(3, ge=0)


@register_stage("test_length_model")
class LengthModelFilter(Filter):
    """Stands for a model-backed filter: it "loads" once per actor, and stamps what loaded it on each score."""

    Params = LengthModelParams
    params: LengthModelParams
    uses_model = True

    def __init__(self, params, context):
        super().__init__(params, context)
        self.instance = (os.getpid(), next(_instances))

    def score(self, record: SampleRecord) -> dict[str, float]:
        return {"answer_words": len(record.conversations[-1]["value"].split()), "loader_pid": self.instance[0],
                "loader_instance": self.instance[1]}

    def check(self, record: SampleRecord, scores: dict[str, float]) -> str | None:
        if scores["answer_words"] < self.params.min_words:
            return f"answer_too_short: {scores['answer_words']:.0f} words < {self.params.min_words}"
        return None


@register_stage("test_tagger")
class TaggerStage(Stage):
    """A plain stage after the model stage, to check records keep flowing through several segments."""

    def process(self, unit: WorkUnit, records: list[SampleRecord]) -> list[SampleRecord]:
        for record in records:
            record.provenance["tagged_by"] = f"test_tagger/{unit.unit_id}"
        return records
