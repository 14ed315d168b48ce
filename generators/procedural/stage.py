"""The pipeline stage that fills a work unit's records from procedural scenes."""

from __future__ import annotations

from typing import Any

from generators.procedural.params import ProceduralParams
from generators.procedural.sample import GENERATOR_NAME, GENERATOR_VERSION, generate_sample, template_fingerprint
from pipeline.images import to_array
from pipeline.record import SampleRecord
from pipeline.stage import Stage, UnitContext, register_stage


@register_stage("procedural_scene")
class ProceduralSceneStage(Stage):
    """Renders each record's scene from its seed: caption, description, QA, metadata and the lossless image."""

    role = "generator"
    version = GENERATOR_VERSION
    Params = ProceduralParams
    params: ProceduralParams

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "generator": GENERATOR_NAME, "template_hash": template_fingerprint(self.params)}

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        for record in records:
            sample = generate_sample(record.category, record.seed, self.params)
            record.seed_caption = sample.caption
            record.caption = sample.caption
            record.description = sample.description
            record.conversations = sample.conversations
            record.metadata = sample.metadata()
            record.image = to_array(sample.image)
