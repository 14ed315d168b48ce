"""The pipeline stage that creates a work unit's records from procedural scenes."""

from __future__ import annotations

from generators.procedural.params import ProceduralParams
from generators.procedural.sample import GENERATOR_NAME, GENERATOR_VERSION, generate_sample, template_fingerprint
from pipeline.images import encode_jpeg
from pipeline.record import SampleRecord
from pipeline.stage import Stage, register_stage
from pipeline.units import WorkUnit


@register_stage("procedural_scene")
class ProceduralSceneStage(Stage):
    """Creates ``unit.num_samples`` records of the unit's category; records already present are kept."""

    Params = ProceduralParams
    params: ProceduralParams

    def provenance(self) -> dict[str, str]:
        return {**self.context.provenance, "generator": GENERATOR_NAME, "generator_version": GENERATOR_VERSION,
                "template_hash": template_fingerprint(self.params)}

    def process(self, unit: WorkUnit, records: list[SampleRecord]) -> list[SampleRecord]:
        provenance = self.provenance()
        created = []
        for position in range(unit.num_samples):
            sample = generate_sample(unit.category, unit.sample_seed(position), self.params)
            created.append(SampleRecord(
                key=unit.sample_key(position),
                category=unit.category,
                split=unit.split,
                seed=unit.sample_seed(position),
                seed_caption=sample.caption,
                caption=sample.caption,
                description=sample.description,
                conversations=sample.conversations,
                provenance=dict(provenance),
                metadata=sample.metadata(),
                image=encode_jpeg(sample.image, self.context.jpeg_quality),
            ))
        return [*records, *created]
