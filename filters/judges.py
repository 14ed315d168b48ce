"""QA verification by models (DATA.md step 6): each QA pair is judged, and a failed pair drops that pair only.

- ``llm_judge``: an LLM checks each answer against the description the image was rendered from;
- ``vlm_judge``: a vision-language model checks each answer against the image itself (the request carries
  the image; a ``transformers_vlm`` or vLLM multimodal model serves it);
- ``statement_score``: an LLM rewrites each pair as one declarative statement, CLIP scores every statement
  against the image, and the mean is kept (``<id>/statement_cosine_mean``); with ``min_cosine`` set, a pair
  whose statement scores below it is dropped.

All three are ``QAVerifier``s (``filters.qa_verdicts``: verdicts recorded per pair, failed pairs moved to
``qa_dropped``) and ask the shared LLM through ``LLMStep.ask``: templates are versioned files whose hash is in
the cache key and provenance, responses are validated against pydantic schemas, and each failed attempt is
retried with a derived seed. A judge that gives no valid verdict after its attempts rejects the sample with
``judge_failed: <reason>`` (``on_failure: pass`` keeps it, each pair marked unverified).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, Field

from filters.image_scores import clip_cosines
from filters.qa_verdicts import QAVerdict, QAVerifier, QAVerifierParams, qa_pairs
from generators.llm.chat import Sampling
from generators.prompts.library import PromptTemplate, load_template
from generators.prompts.schemas import QAVerdicts, Statements
from generators.stages.llm_step import Job, LLMStep, Outcome
from pipeline.record import SampleRecord
from pipeline.stage import UnitContext, register_stage

MAX_JUDGED_QAS = 8  # the verdict and statement schemas hold at most this many pairs


class JudgeParams(QAVerifierParams):
    model: str = Field(description="The shared LLM (or VLM) under `models:`")
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.0, max_new_tokens=384),
                               description="Greedy by default: a judge should not be a lottery")
    max_attempts: int = Field(2, ge=1, description="Attempts per record, each with its own derived seed")
    structured: bool = Field(True, description="Send the response's JSON schema with each request")
    template_version: int | None = Field(None, description="Pin the template version (default: the newest)")
    template_dir: str | None = Field(None, description="A prompt folder of the built-in layout to use instead")
    on_failure: Literal["reject", "pass"] = Field(
        "reject", description="When no attempt gives a valid response: reject the sample, or keep every pair")


class ModelVerifier(QAVerifier, LLMStep):
    """A QA verifier that asks the shared LLM once per record (all its pairs in one prompt)."""

    Params: ClassVar[type[BaseModel]] = JudgeParams
    params: JudgeParams
    template_step: ClassVar[str] = ""
    template_name: ClassVar[str] = ""
    schema: ClassVar[type[BaseModel]]

    @classmethod
    def category_problems(cls, params: Any, categories: list[str]) -> list[str]:
        try:  # any category: a judge needs no family, only its template
            load_template(cls.template_step, cls.template_name, params.template_version, params.template_dir)
        except (FileNotFoundError, ValueError) as error:
            return [f"stage {cls.kind!r}: {error}"]
        return []

    def verifier_template(self) -> PromptTemplate:
        return load_template(self.template_step, self.template_name, self.params.template_version,
                             self.params.template_dir)

    def variables(self, record: SampleRecord, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        # One line per pair in the prompt: the answer-format instruction after a question's newline stays on it.
        return {"qas": [{"question": " ".join(q.split()), "answer": " ".join(a.split())} for q, a in pairs]}

    def request_extras(self, record: SampleRecord) -> dict[str, Any]:
        """What goes into the request besides the messages (the VLM judge adds the image)."""
        return {}

    def judge(self, records: list[SampleRecord], unit: UnitContext) -> list[list[QAVerdict] | None]:
        template = self.verifier_template()
        jobs, owners = [], []
        verdicts: list[list[QAVerdict] | None] = [None] * len(records)
        for index, record in enumerate(records):
            pairs = qa_pairs(record)
            if not pairs:
                verdicts[index] = []
                continue
            if len(pairs) > MAX_JUDGED_QAS:
                raise ValueError(f"{record.key} has {len(pairs)} QA pairs; {self.kind} judges at most "
                                 f"{MAX_JUDGED_QAS} per sample")
            jobs.append(Job(record, template, self.variables(record, pairs), self.schema,
                            {"num_qas": len(pairs)}, extras=self.request_extras(record)))
            owners.append(index)
        answered: list[tuple[int, Outcome]] = []
        for index, outcome in zip(owners, self.ask(jobs, unit) if jobs else [], strict=True):
            if not outcome.reason:
                answered.append((index, outcome))
            elif self.params.on_failure == "reject":
                records[index].reject(self.id, f"judge_failed: {outcome.reason}")
            else:
                verdicts[index] = [QAVerdict(i, True, f"unverified: {outcome.reason}")
                                   for i in range(len(qa_pairs(records[index])))]
        results = self.verdicts([records[i] for i, _ in answered], [o for _, o in answered], unit)
        for (index, _), result in zip(answered, results, strict=True):
            verdicts[index] = result
        return verdicts

    def verdicts(self, records: list[SampleRecord], outcomes: list[Outcome], unit: UnitContext
                 ) -> list[list[QAVerdict]]:
        results = []
        for outcome in outcomes:
            response: QAVerdicts = outcome.response  # type: ignore[assignment]
            results.append([QAVerdict(v.index, v.correct, v.reason.strip() or ("correct" if v.correct else
                                                                                "judged incorrect"))
                            for v in sorted(response.verdicts, key=lambda v: v.index)])
        return results


@register_stage("llm_judge")
class LLMJudge(ModelVerifier):
    """Each answer against the description (falls back to the caption for caption-only samples)."""

    version = "1"
    template_step, template_name = "judge", "qa_description"
    schema = QAVerdicts

    def variables(self, record: SampleRecord, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        text = record.description or record.caption
        if not text.strip():
            raise ValueError(f"{record.key} has no description or caption for the LLM judge to check against")
        return {**super().variables(record, pairs), "description": text}


@register_stage("vlm_judge")
class VLMJudge(ModelVerifier):
    """Each answer against the image, by a vision-language model (the image travels with the request)."""

    version = "1"
    template_step, template_name = "judge", "qa"
    schema = QAVerdicts

    def request_extras(self, record: SampleRecord) -> dict[str, Any]:
        if record.image is None:
            raise ValueError(f"{record.key} has no image for the VLM judge; is an image stage configured before?")
        return {"images": [np.asarray(record.image, dtype=np.uint8)]}


class StatementParams(JudgeParams):
    clip_model: str = Field("clip", description="The shared open_clip model under `models:`")
    min_cosine: float | None = Field(None, ge=-1, le=1, description="Drop a pair whose statement's raw CLIP cosine "
                                                                    "with the image is below this; null: score only")


@register_stage("statement_score")
class StatementScore(ModelVerifier):
    """QA pairs rewritten as statements by the LLM, each scored by CLIP against the image.

    Scores: ``<id>/statement_cosine_mean`` and ``_min`` (raw cosine), besides the verifier's counts."""

    Params = StatementParams
    params: StatementParams
    version = "1"
    template_step, template_name = "statement", "all"
    schema = Statements

    @classmethod
    def models_used(cls, params: StatementParams) -> list[str]:
        return [params.model, params.clip_model]

    def verdicts(self, records: list[SampleRecord], outcomes: list[Outcome], unit: UnitContext
                 ) -> list[list[QAVerdict]]:
        pairs = []
        for record, outcome in zip(records, outcomes, strict=True):
            if record.image is None:
                raise ValueError(f"{record.key} has no image to score its statements against")
            pairs += [(record.seed, record.image, s) for s in outcome.response.statements]  # type: ignore[union-attr]
        cosines = iter(clip_cosines(unit, self.params.clip_model, pairs))
        results = []
        for record, outcome in zip(records, outcomes, strict=True):
            statements = outcome.response.statements  # type: ignore[union-attr]
            values = [next(cosines) for _ in statements]
            record.scores[f"{self.id}/statement_cosine_mean"] = float(np.mean(values))
            record.scores[f"{self.id}/statement_cosine_min"] = float(np.min(values))
            record.metadata.setdefault("qa_statements", {})[self.id] = [
                {"statement": s, "clip_cosine": round(v, 4)} for s, v in zip(statements, values, strict=True)]
            threshold = self.params.min_cosine
            results.append([QAVerdict(i, threshold is None or v >= threshold,
                                      f"statement clip_cosine {v:.3f}" + ("" if threshold is None or v >= threshold
                                                                          else f" < {threshold:g}"))
                            for i, v in enumerate(values)])
        return results
