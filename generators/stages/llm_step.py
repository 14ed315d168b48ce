"""One LLM step for a batch of records: render, call the shared model through the cache, validate, retry.

Every attempt of a record has its own seed (derived from the record's seed, the stage id and the attempt),
hence its own cache key, so a resumed run replays each attempt exactly. A record still failing after
``max_attempts`` is rejected with the reason of its last attempt; each kind of failure has its own reason:

- ``llm_error``: the backend could not serve the request
- ``llm_empty``: the model answered nothing
- ``llm_truncated``: cut at ``max_new_tokens`` (finish reason ``length``)
- ``llm_malformed_json``: not strict JSON
- ``llm_over_long``: a length limit of the family exceeded (words, items)
- ``llm_schema``: valid JSON that breaks the family's schema (wrong fields, answer not among the options, ...)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from generators.llm.chat import FINISH_ERROR, FINISH_LENGTH, Sampling, chat_request
from generators.prompts.families import Family, category_problems, effective_limits, family_of
from generators.prompts.library import PromptTemplate, load_template
from generators.prompts.schemas import OVER_LONG, Limits
from pipeline.planning import derive_seed
from pipeline.record import SampleRecord
from pipeline.stage import Stage, StageParams, UnitContext

LENGTH_ERROR_TYPES = {OVER_LONG, "too_long", "string_too_long"}


class LLMStepParams(StageParams):
    model: str = Field(description="The shared LLM (a name under `models:`)")
    sampling: Sampling = Field(default_factory=Sampling)
    max_attempts: int = Field(3, ge=1, description="Attempts per record, each with its own derived seed")
    structured: bool = Field(True, description="Send the response's JSON schema with each request")
    families: dict[str, str] = Field(default_factory=dict, description="Category -> family, for other names")
    limits: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Per family (or `all`): overrides of the family's limits")
    template_dir: str | None = Field(None, description="A prompt folder of the built-in layout to use instead")
    template_versions: dict[str, int] = Field(default_factory=dict, description="'step/name' -> version to pin")


@dataclass
class Job:
    """What one record asks of the step."""

    record: SampleRecord
    template: PromptTemplate
    variables: dict[str, Any]
    schema: type[BaseModel]
    context: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # more request fields, e.g. the images of a VLM call


@dataclass
class Outcome:
    response: BaseModel | None
    reason: str | None
    attempts: int
    usage: dict[str, Any]


class LLMStep(Stage):
    """Base of the LLM stages: family lookup, templates, and ``ask`` (the retrying, validating call)."""

    Params = LLMStepParams
    params: LLMStepParams
    step: str = ""  # the template folder of the family's step, or "" when the family decides

    @classmethod
    def category_problems(cls, params: LLMStepParams, categories: list[str]) -> list[str]:
        problems = category_problems(categories, params.families, cls.kind)
        if problems:
            return problems
        for category in categories:
            family = family_of(category, params.families)
            for step in cls.steps_of(family):
                try:
                    load_template(step, family.name, params.template_versions.get(f"{step}/{family.name}"),
                                  params.template_dir)
                except (FileNotFoundError, ValueError) as error:
                    problems.append(f"stage {cls.kind!r}, category {category!r}: {error}")
        return problems

    @classmethod
    def steps_of(cls, family: Family) -> list[str]:
        """The template folders this stage reads for ``family``."""
        return [cls.step] if cls.step else []

    def family(self, record: SampleRecord) -> Family:
        return family_of(record.category, self.params.families)

    def limits(self, family: Family) -> Limits:
        return effective_limits(family, self.params.limits)

    def template(self, step: str, family: Family) -> PromptTemplate:
        version = self.params.template_versions.get(f"{step}/{family.name}")
        return load_template(step, family.name, version, self.params.template_dir)

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "sampling": self.params.sampling.model_dump(),
                "max_attempts": self.params.max_attempts, "structured": self.params.structured}

    def ask(self, jobs: list[Job], unit: UnitContext) -> list[Outcome]:
        """Each job's validated response, or the reason it failed on its last attempt."""
        outcomes: list[Outcome | None] = [None] * len(jobs)
        usage = [{"prompt_tokens": 0, "completion_tokens": 0, "finish_reasons": []} for _ in jobs]
        pending = list(range(len(jobs)))
        reasons: dict[int, str] = {}
        for attempt in range(self.params.max_attempts):
            if not pending:
                break
            requests = [self._request(jobs[i], attempt) for i in pending]
            results = unit.cache.map(requests, lambda batch: unit.models[self.params.model].call("chat", batch))
            still = []
            for index, result in zip(pending, results, strict=True):
                usage[index]["prompt_tokens"] += result["prompt_tokens"]
                usage[index]["completion_tokens"] += result["completion_tokens"]
                usage[index]["finish_reasons"].append(result["finish_reason"])
                response, reason = judge(result, jobs[index], self.params.sampling)
                if reason is None:
                    outcomes[index] = Outcome(response, None, attempt + 1, usage[index])
                else:
                    reasons[index] = reason
                    still.append(index)
            pending = still
        for index in pending:
            outcomes[index] = Outcome(None, f"{reasons[index]} (all {self.params.max_attempts} attempts failed)",
                                      self.params.max_attempts, usage[index])
        for job, outcome in zip(jobs, outcomes, strict=True):
            job.record.provenance.setdefault("prompt_templates", {})[self.id] = job.template.ref
            job.record.metadata.setdefault("llm_calls", {})[self.id] = {"attempts": outcome.attempts,
                                                                        **outcome.usage}
        return outcomes  # type: ignore[return-value]

    def _request(self, job: Job, attempt: int) -> tuple[int, dict[str, Any]]:
        seed = derive_seed(job.record.seed, self.id, attempt)
        schema = job.schema.model_json_schema() if self.params.structured else None
        request = chat_request(job.template.messages(**job.variables), seed, self.params.sampling, schema)
        request["template"] = job.template.ref  # in the cache key; backends ignore it
        request.update(job.extras)
        return seed, request


def judge(result: dict[str, Any], job: Job, sampling: Sampling) -> tuple[BaseModel | None, str | None]:
    """The validated response of one result, or the reason it is unusable."""
    if result["finish_reason"] == FINISH_ERROR or result.get("error"):
        return None, f"llm_error: {result.get('error') or 'the backend failed'}"
    text = (result["text"] or "").strip()
    if not text:
        return None, "llm_empty: the model answered nothing"
    if result["finish_reason"] == FINISH_LENGTH:
        return None, f"llm_truncated: cut at max_new_tokens={sampling.max_new_tokens}"
    parsed = result["parsed"]
    if parsed is None:
        try:
            json.loads(text)
        except (json.JSONDecodeError, ValueError) as error:
            return None, f"llm_malformed_json: {error}"
    try:
        return job.schema.model_validate(parsed, context=job.context), None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "response"
        kind = "llm_over_long" if any(e["type"] in LENGTH_ERROR_TYPES for e in error.errors()) else "llm_schema"
        if kind == "llm_over_long":
            first = next(e for e in error.errors() if e["type"] in LENGTH_ERROR_TYPES)
            where = ".".join(str(p) for p in first["loc"]) or "response"
        return None, f"{kind}: {where}: {first['msg']}"
