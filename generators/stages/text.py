"""`llm_description`: the first LLM step, from the seed caption to what the image will be rendered from.

Pretraining families get a caption of at most 12 words (with the family's focus stated beside it, e.g. the
colours it names); instruction families a 110-180-word description; SynthTextQA a description with its
rendered text elements; the contrast families a left and a right description from one seed.
"""

from __future__ import annotations

from typing import Any

from generators.prompts.families import Family
from generators.stages.llm_step import Job, LLMStep
from pipeline.record import SampleRecord
from pipeline.stage import UnitContext, register_stage


@register_stage("llm_description")
class DescriptionStage(LLMStep):
    role = "generator"
    version = "1"

    @classmethod
    def steps_of(cls, family: Family) -> list[str]:
        return [family.text_step]

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        jobs = []
        for record in records:
            if not record.seed_caption.strip():
                record.reject(self.id, "no_seed_caption: configure a seed_captions stage before this one")
                continue
            family = self.family(record)
            limits = self.limits(family)
            jobs.append(Job(record, self.template(family.text_step, family),
                            {"seed_caption": record.seed_caption, "limits": limits}, family.text_schema,
                            {"limits": limits}))
        for job, outcome in zip(jobs, self.ask(jobs, unit), strict=True):
            if outcome.reason:
                job.record.reject(self.id, outcome.reason)
            else:
                apply_text(job.record, self.family(job.record), outcome.response.model_dump())


def apply_text(record: SampleRecord, family: Family, response: dict[str, Any]) -> None:
    """Store a validated first-step response on the record."""
    if family.kind == "pretraining":
        record.caption = response.pop("caption")
        record.metadata["caption_facts"] = response  # what the caption states, e.g. its colours
    elif family.contrast:
        record.description = f"Left: {response['left']}\n\nRight: {response['right']}"
        record.metadata["contrast"] = response
    else:
        record.description = response["description"]
        if family.text_elements:
            record.metadata["text_elements"] = response["text_elements"]


def render_prompts(record: SampleRecord, family: Family) -> list[str]:
    """What the diffusion model renders: one prompt, or the left and right prompts of a contrast pair."""
    if family.kind == "pretraining":
        return [record.caption]
    if family.contrast:
        return [record.metadata["contrast"]["left"], record.metadata["contrast"]["right"]]
    return [record.description]
