"""`llm_qa`: the conversation of each record, from the description text (never from the image).

Instruction families ask the LLM for QA under the family's schema and get the paper's answer-format
instructions appended; pretraining families need no call: a brief-caption request answered by the caption.
"""

from __future__ import annotations

import random
from typing import Any

from generators.prompts.conversation import conversation, qa_entry, turns_of
from generators.prompts.families import QA_STEP, Family
from generators.prompts.library import load_list
from generators.stages.llm_step import Job, LLMStep
from pipeline.planning import derive_seed
from pipeline.record import SampleRecord
from pipeline.stage import UnitContext, register_stage


@register_stage("llm_qa")
class QAStage(LLMStep):
    role = "generator"
    version = "1"
    step = QA_STEP

    @classmethod
    def steps_of(cls, family: Family) -> list[str]:
        return [QA_STEP] if family.kind == "instruction" else []

    def provenance(self) -> dict[str, Any]:
        _, sha = load_list("conversation", "caption_prompts", "prompts", self.params.template_dir)
        return {**super().provenance(), "caption_prompts_sha256": sha}

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        jobs = []
        for record in records:
            family = self.family(record)
            if family.kind == "pretraining":
                self._caption_conversation(record)
                continue
            limits = self.limits(family)
            variables: dict[str, Any] = {"description": record.description, "limits": limits}
            context: dict[str, Any] = {"limits": limits}
            if family.text_elements:
                variables["text_elements"] = record.metadata.get("text_elements", [])
                context["text_elements"] = [e["text"] for e in variables["text_elements"]]
            if family.contrast:
                variables.update(record.metadata["contrast"])
            jobs.append(Job(record, self.template(QA_STEP, family), variables, family.qa_schema, context))
        for job, outcome in zip(jobs, self.ask(jobs, unit), strict=True):
            if outcome.reason:
                job.record.reject(self.id, outcome.reason)
                continue
            turns = turns_of(outcome.response, self.family(job.record).answer_style)
            job.record.conversations = conversation(turns)
            job.record.metadata["qa"] = [entry for _, _, entry in turns]

    def _caption_conversation(self, record: SampleRecord) -> None:
        prompts, _ = load_list("conversation", "caption_prompts", "prompts", self.params.template_dir)
        request = random.Random(derive_seed(record.seed, self.id)).choice(prompts)
        record.conversations = conversation([(request, record.caption, None)])
        record.metadata["qa"] = [qa_entry(request, record.caption, "caption")]
