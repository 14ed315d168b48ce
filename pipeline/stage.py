"""Stages: everything that produces or judges records implements one interface and registers by name.

The pipeline wires stages from the config alone; a model-backed generator or a new filter plugs in by
registering a ``Stage`` subclass, never by editing the pipeline. Each entry of ``stages:`` is an instance
with its own ``id``, so one kind can run twice (rules on the seed caption, then on the description).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from pipeline.record import SampleRecord
from pipeline.registry import Registry

if TYPE_CHECKING:
    from pipeline.cache import CallCache
    from pipeline.planning import WorkUnit


class StageParams(BaseModel):
    """Base for every stage's parameters; unknown keys are errors so typos fail loudly."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class RunContext:
    """Run-wide facts a stage may need; ``provenance`` is merged into every record the run creates.

    ``models`` holds each shared model's identity; ``model_services`` says where they are served (Ray actor
    handles, or None to load them in the process that calls them).
    """

    run_seed: int
    provenance: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_specs: dict[str, Any] = field(default_factory=dict)
    model_services: dict[str, list[Any]] | None = None


@dataclass
class UnitContext:
    """What a stage gets with one unit's records: the unit, its cache of model calls, and its shared models
    (``unit.models["llm"].call("chat", requests)``)."""

    unit: WorkUnit
    cache: CallCache
    models: Any = None


class Stage(ABC):
    """Takes pending records of one work unit and creates, extends, scores or rejects them in place.

    A stage with ``uses_model = True`` runs on a pool of long-lived Ray actors so its model loads once per
    actor; others run as stateless Ray tasks. ``version`` names the code's behaviour: bump it when the same
    inputs would give other outputs, so cached model calls are not replayed across the change.
    """

    kind: ClassVar[str] = ""
    role: ClassVar[str] = "transform"  # "generator", "filter" or "transform"; shown on the card
    Params: ClassVar[type[StageParams]] = StageParams
    uses_model: ClassVar[bool] = False
    version: ClassVar[str] = "1"

    def __init__(self, stage_id: str, params: StageParams, context: RunContext) -> None:
        self.id = stage_id
        self.params = params
        self.context = context

    @abstractmethod
    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        """Work on ``records`` (all pending) in place; reject a record with ``record.reject(self.id, reason)``.

        An exception rejects the batch's records only if each of them also fails on its own: the engine
        retries a failed batch sample by sample to find the bad one.
        """

    @classmethod
    def models_used(cls, params: StageParams) -> list[str]:
        """Names of the shared models (``models:`` of the config) this stage calls: its ``model`` param."""
        model = getattr(params, "model", None)
        return [model] if isinstance(model, str) and model else []

    @classmethod
    def category_problems(cls, params: StageParams, categories: list[str]) -> list[str]:
        """Why this stage cannot serve some of the run's categories, checked when the config loads (e.g. no
        prompt template for a category); none by default."""
        return []

    def fingerprint(self) -> dict[str, Any]:
        """What decides this stage's outputs besides its inputs: the cache key of its model calls."""
        models = {name: self.context.models.get(name) for name in self.models_used(self.params)}
        return {"kind": self.kind, "version": self.version, "params": self.params.model_dump(mode="json"),
                "models": models}

    def provenance(self) -> dict[str, Any]:
        """Stored in each record under ``provenance["stages"][id]``: the stage's kind and code version, and
        the identity (backend, model, revision) of every model it calls."""
        facts: dict[str, Any] = {"kind": self.kind, "version": self.version}
        for name in self.models_used(self.params):
            identity = self.context.models.get(name, {})
            facts.update({f"{name}_{k}": v for k, v in identity.items()})
        return facts


class Filter(Stage):
    """A stage that scores pending records and rejects those that fail; scores are always kept."""

    role: ClassVar[str] = "filter"

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        for record, scores in zip(records, self.score_batch(records, unit), strict=True):
            record.scores.update({f"{self.id}/{metric}": float(value) for metric, value in scores.items()})
            reason = self.check(record, scores)
            if reason:
                record.reject(self.id, reason)

    def score_batch(self, records: list[SampleRecord], unit: UnitContext) -> list[dict[str, float]]:
        """Scores of each record; override to batch model calls."""
        return [self.score(r) for r in records]

    def score(self, record: SampleRecord) -> dict[str, float]:
        return {}

    @abstractmethod
    def check(self, record: SampleRecord, scores: dict[str, float]) -> str | None:
        """The reason to reject ``record``, or None to keep it."""


class GlobalStage(Stage):
    """A stage whose decision needs the whole run, e.g. dedup across all units or a top fraction by score.

    On each unit it computes a signature per pending record, stored with the unit. After every round the
    engine calls ``decide`` once with the signatures of all records accepted so far in the run, in key order;
    its answer must be a pure function of them, so the result does not depend on the order units finished in
    and a resumed run decides the same. Removed samples become rejects of this stage; top-up rounds replace
    them until each split has its target.
    """

    role: ClassVar[str] = "filter"

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        for record, signature in zip(records, self.signatures(records, unit), strict=True):
            record.signatures[self.id] = signature

    @abstractmethod
    def signatures(self, records: list[SampleRecord], unit: UnitContext) -> list[bytes]:
        """One signature per record (e.g. a hash, a MinHash, an embedding or a score), as bytes."""

    @abstractmethod
    def decide(self, signatures: Iterable[tuple[str, bytes]]) -> dict[str, str]:
        """``key -> reason`` for the records to remove, given ``(key, signature)`` in key order."""


# Built-in stages, imported when first named; plugins register their own with @register_stage.
BUILTIN_STAGES = {
    "procedural_scene": "generators.procedural.stage:ProceduralSceneStage",
    "rules": "filters.rules:RuleFilter",
    "choose_image": "filters.choose:ChooseImage",
    "text_rules": "filters.text_rules:TextRuleFilter",
    "qa_rules": "filters.qa_rules:QARuleVerifier",
    "clip_score": "filters.image_scores:ClipScore",
    "detail_score": "filters.image_scores:DetailScore",
    "image_total": "filters.image_scores:ImageTotal",
    "top_fraction": "filters.top_fraction:TopFraction",
    "dedup_text": "filters.dedup:ExactTextDedup",
    "dedup_minhash": "filters.dedup:MinHashDedup",
    "dedup_image_hash": "filters.dedup:ImageHashDedup",
    "dedup_embedding": "filters.dedup:EmbeddingDedup",
    "seed_captions": "generators.seeds.stage:SeedCaptionStage",
    "llm_description": "generators.stages.text:DescriptionStage",
    "diffusion_image": "generators.stages.image:ImageStage",
    "llm_qa": "generators.stages.qa:QAStage",
    "llm_judge": "filters.judges:LLMJudge",
    "vlm_judge": "filters.judges:VLMJudge",
    "statement_score": "filters.judges:StatementScore",
    "perplexity": "filters.perplexity:PerplexityFilter",
}
STAGES: Registry[type[Stage]] = Registry("stage", BUILTIN_STAGES)

S = TypeVar("S", bound=type[Stage])


def register_stage(name: str) -> Callable[[S], S]:
    def add(cls: S) -> S:
        cls.kind = name
        return STAGES.register(name)(cls)

    return add
