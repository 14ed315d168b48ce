"""Typed run configuration, loaded from YAML presets in ``configs/`` with ``--set a.b=value`` overrides.

A preset may name another as ``base:``; it is deep-merged underneath. Validation errors name the file and
the dotted field at fault.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.config_files import apply_override, dotted, read_with_bases, validate_model
from pipeline.model_backend import MODEL_BACKENDS, ModelBackend
from pipeline.stage import STAGES, Stage, StageParams

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESET_DIR = REPO_ROOT / "configs"
STAGE_ID_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
CATEGORY_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,59}$")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RayConfig(Strict):
    address: str | None = Field(None, description="Ray cluster address; None uses RAY_ADDRESS or an embedded local Ray")
    num_cpus: int | None = Field(
        None, ge=1, description="CPU slots of the embedded local Ray, i.e. units worked on at once; None: every core"
    )
    num_gpus: int | None = Field(None, ge=0, description="GPUs of the embedded local Ray; None: as detected")
    temp_dir: str | None = Field(None, description="Session folder of the embedded local Ray")
    progress: bool = True


# Fields of `dataset` that only describe the data on the card; they may change when a run resumes.
CARD_ONLY_FIELDS = ("pretty_name", "license", "language", "tags")


class DatasetConfig(Strict):
    pretty_name: str = "FUSION synthetic QA"
    license: str = "cc-by-4.0"
    language: list[str] = ["en"]
    tags: list[str] = ["synthetic", "multimodal", "visual-question-answering", "webdataset"]
    unit_size: int = Field(
        64, ge=1, description="Samples per work unit: what one task or actor call holds, and one cache file"
    )
    shard_size: int = Field(1000, ge=1, description="Accepted samples per output shard (the last may hold fewer)")
    image_format: Literal["jpg", "png", "webp"] = Field("jpg", description="How the writer encodes images")
    image_quality: int = Field(90, ge=1, le=100, description="JPEG/WebP quality")
    keep_reject_images: bool = Field(True, description="Store rejected samples' images, so thresholds can be loosened")
    max_attempts_factor: float = Field(
        2.0, ge=1.0, description="Positions tried per wanted sample at most, top-up rounds included"
    )


class FaultConfig(Strict):
    unit_retries: int = Field(2, ge=0, description="Retries of a unit whose task or actor fails as a whole")
    max_failed_fraction: float = Field(
        0.2, ge=0.0, le=1.0, description="Stop the run when more than this share of samples end in an error"
    )
    min_samples_before_abort: int = Field(50, ge=1, description="Samples seen before max_failed_fraction applies")


class CategoryConfig(Strict):
    train: int = Field(0, ge=0, description="Accepted samples wanted in the train split")
    test: int = Field(0, ge=0, description="Accepted samples wanted in the held-out test split")

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.train, "test": self.test}


class PoolSize(Strict):
    min: int = Field(1, ge=1)
    max: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> PoolSize:
        if self.max < self.min:
            raise ValueError(f"pool max ({self.max}) must be at least its min ({self.min})")
        return self


class StageResources(Strict):
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; fractions share a GPU")
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs per model replica; above 1 each actor reserves a placement group of that many"
    )
    accelerator_type: str | None = Field(None, description="e.g. A100, H100 (Ray's accelerator_type)")
    concurrency: int | PoolSize | None = Field(
        None, description="Actors of a model stage (a number, or {min, max} to autoscale; default 1); "
        "for other stages, a cap on tasks at once"
    )
    max_concurrency: int | None = Field(None, ge=1, description="Calls one (async) actor serves at once")
    runtime_env: dict[str, Any] | None = Field(None, description="Extra Ray runtime_env for this stage's workers")
    batch_size: int | None = Field(None, ge=1, description="Records per call within a unit; default: the whole unit")

    @model_validator(mode="after")
    def _gpus_consistent(self) -> StageResources:
        if self.tensor_parallel_size > 1 and self.num_gpus not in (0, self.tensor_parallel_size):
            raise ValueError(f"with tensor_parallel_size={self.tensor_parallel_size} the actor reserves that many "
                             f"GPUs; leave num_gpus unset (got {self.num_gpus})")
        return self

    @property
    def gpus_reserved(self) -> float:
        return float(self.tensor_parallel_size) if self.tensor_parallel_size > 1 else self.num_gpus

    def pool_bounds(self) -> tuple[int, int]:
        if isinstance(self.concurrency, PoolSize):
            return self.concurrency.min, self.concurrency.max
        size = self.concurrency or 1
        return size, size


class ModelResources(Strict):
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica; fractions share a GPU")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica, as a placement group on one node")
    accelerator_type: str | None = None
    replicas: int = Field(1, ge=1, description="Copies of the model; stages' calls are spread over them")
    max_concurrency: int = Field(64, ge=1, description="Calls one replica accepts at once (batched together)")
    runtime_env: dict[str, Any] | None = None

    @property
    def gpus_reserved(self) -> float:
        return float(self.tensor_parallel_size) if self.tensor_parallel_size > 1 else self.num_gpus


class ModelSpec(Strict):
    """A model that stages share: loaded once per replica, serving the calls of every stage and unit."""

    backend: str = Field(description="The backend kind, as registered (e.g. transformers_llm, vllm, diffusers)")
    params: dict[str, Any] = Field(default_factory=dict)
    resources: ModelResources = Field(default_factory=ModelResources)
    batch_size: int = Field(16, ge=1, description="Items per backend call on a replica")
    batch_across_calls: bool = Field(
        False, description="Fill a backend batch from several callers' calls (units, stages). Fuller batches, but a "
        "padded batch's numerics depend on its rows, so an item's output then depends on what ran beside it: a "
        "fresh run is byte-identical to another only with this off (the default; resume is exact either way)")
    batch_wait_ms: float = Field(5.0, ge=0, description="With batch_across_calls: how long a replica waits for "
                                 "more calls to fill a batch")

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, backend: str) -> str:
        if backend not in MODEL_BACKENDS:
            raise ValueError(f"unknown model backend {backend!r}; known: {', '.join(MODEL_BACKENDS.names()) or 'none'}")
        return backend

    @model_validator(mode="after")
    def _valid_params(self) -> ModelSpec:
        self.typed_params()
        return self

    def backend_class(self) -> type[ModelBackend]:
        return MODEL_BACKENDS.get(self.backend)

    def typed_params(self) -> StageParams:
        try:
            return self.backend_class().Params.model_validate(self.params)
        except ValidationError as error:
            details = "; ".join(f"params.{dotted(e['loc'])}: {e['msg']}" for e in error.errors())
            raise ValueError(f"backend {self.backend!r}: {details}") from None

    def identity(self) -> dict[str, Any]:
        return self.backend_class().identity(self.typed_params())


class StageSpec(Strict):
    name: str = Field(description="The stage kind, as registered")
    id: str | None = Field(None, description="This instance's name in scores, rejects and the card; default: name")
    params: dict[str, Any] = Field(default_factory=dict)
    resources: StageResources = Field(default_factory=StageResources)

    @field_validator("name")
    @classmethod
    def _known_stage(cls, name: str) -> str:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; known stages: {', '.join(STAGES.names())}")
        return name

    @field_validator("id")
    @classmethod
    def _valid_id(cls, stage_id: str | None) -> str | None:
        if stage_id is not None and not STAGE_ID_PATTERN.match(stage_id):
            raise ValueError(f"stage id {stage_id!r} must match {STAGE_ID_PATTERN.pattern}")
        return stage_id

    @model_validator(mode="after")
    def _valid_params(self) -> StageSpec:
        if self.id is None:
            self.id = self.name
        self.typed_params()
        return self

    @property
    def stage_id(self) -> str:
        return self.id or self.name

    def stage_class(self) -> type[Stage]:
        return STAGES.get(self.name)

    def typed_params(self) -> StageParams:
        try:
            return self.stage_class().Params.model_validate(self.params)
        except ValidationError as error:
            details = "; ".join(f"params.{dotted(e['loc'])}: {e['msg']}" for e in error.errors())
            raise ValueError(f"stage {self.stage_id!r}: {details}") from None


class RunConfig(Strict):
    name: str
    seed: int = 0
    # Modules imported before the stages are resolved, on the driver and on every worker; a module
    # outside this project registers its own stages this way.
    plugins: list[str] = Field(default_factory=list)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    categories: dict[str, CategoryConfig]
    # Models that stages share, by name; a stage names one in its params (e.g. `model: llm`).
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    stages: list[StageSpec] = Field(min_length=1)
    faults: FaultConfig = Field(default_factory=FaultConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    # What `fusion run` trains on the synthesized data; validated by train/ (it never changes the data).
    train: dict[str, Any] | None = None

    @field_validator("plugins")
    @classmethod
    def _import_plugins(cls, modules: list[str]) -> list[str]:
        import_plugins(modules)
        return modules

    @field_validator("categories")
    @classmethod
    def _valid_categories(cls, categories: dict[str, CategoryConfig]) -> dict[str, CategoryConfig]:
        if not categories:
            raise ValueError("at least one category is required")
        by_key: dict[str, str] = {}
        for name in categories:
            if not CATEGORY_PATTERN.match(name):
                raise ValueError(f"category name {name!r} must be 1-60 letters, digits and underscores, starting with "
                                 "a letter (it becomes part of every sample key)")
            if name.lower() in by_key:
                raise ValueError(f"categories {by_key[name.lower()]!r} and {name!r} differ only in case; their "
                                 "sample keys would collide")
            by_key[name.lower()] = name
        return categories

    @field_validator("models")
    @classmethod
    def _model_names(cls, models: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        for name in models:
            if not STAGE_ID_PATTERN.match(name):
                raise ValueError(f"model name {name!r} must match {STAGE_ID_PATTERN.pattern}")
        return models

    @model_validator(mode="after")
    def _models_exist(self) -> RunConfig:
        for index, spec in enumerate(self.stages):
            for name in spec.stage_class().models_used(spec.typed_params()):
                if name not in self.models:
                    known = ", ".join(self.models) or "none are configured under `models:`"
                    raise ValueError(f"stages.{index} ({spec.stage_id!r}) names model {name!r}; known: {known}")
        return self

    @model_validator(mode="after")
    def _stages_serve_categories(self) -> RunConfig:
        problems = [problem for spec in self.stages
                    for problem in spec.stage_class().category_problems(spec.typed_params(), list(self.categories))]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def models_in_use(self) -> list[str]:
        used = {n for spec in self.stages for n in spec.stage_class().models_used(spec.typed_params())}
        return [name for name in self.models if name in used]

    @model_validator(mode="after")
    def _unique_stage_ids(self) -> RunConfig:
        seen: dict[str, int] = {}
        for index, spec in enumerate(self.stages):
            if spec.stage_id in seen:
                raise ValueError(f"stages.{seen[spec.stage_id]} and stages.{index} both have id {spec.stage_id!r}; "
                                 "give one of them another `id`")
            seen[spec.stage_id] = index
        return self

    def data_fields(self) -> dict[str, Any]:
        return data_fields(self.model_dump(mode="json"))


def data_fields(dumped: dict[str, Any]) -> dict[str, Any]:
    """The fields of a dumped config that decide the dataset's content: Ray placement, fault handling,
    stage and model resources, batching, card text and training do not."""
    data = copy.deepcopy({k: v for k, v in dumped.items() if k not in ("ray", "train", "faults")})
    for name in CARD_ONLY_FIELDS:
        data.get("dataset", {}).pop(name, None)
    for stage in data.get("stages", []):
        stage.pop("resources", None)
    for model in data.get("models", {}).values():
        for placement in ("resources", "batch_size", "batch_wait_ms"):
            model.pop(placement, None)
    return data


def differing_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two dumped configs differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [path for key in sorted(set(old) | set(new), key=str)
                for path in differing_fields(old.get(key), new.get(key), f"{prefix}{key}.")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [path for i, (a, b) in enumerate(zip(old, new)) for path in differing_fields(a, b, f"{prefix}{i}.")]
    return [] if old == new else [prefix.rstrip(".") or "<root>"]


def stage_spec(config: RunConfig, stage_id: str) -> StageSpec:
    for spec in config.stages:
        if spec.stage_id == stage_id:
            return spec
    raise KeyError(f"no stage with id {stage_id!r}; stages: {', '.join(s.stage_id for s in config.stages)}")


def import_plugins(modules: list[str]) -> None:
    """Import plugin modules from the current directory first, as ``python -m`` would, then from sys.path."""
    if modules and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"plugin module {module!r} cannot be imported: {error}") from None


def resolve_preset(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = PRESET_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
    raise ConfigError(f"config {str(name_or_path)!r} is neither a file nor a preset in {PRESET_DIR} (presets: {known})")


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    path = resolve_preset(name_or_path)
    raw = read_with_bases(path, _resolve_base, ConfigError)
    for override in overrides or []:
        apply_override(raw, override, ConfigError)
    return validate_config(raw, source=str(path))


def validate_config(raw: dict[str, Any], source: str) -> RunConfig:
    return validate_model(RunConfig, raw, source, "config", ConfigError)


def save_config(config: RunConfig, path: Path) -> None:
    from pipeline.fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def _resolve_base(path: Path, base: str) -> Path:
    """A base next to the file that names it, else a preset."""
    beside = path.parent / (base if base.endswith(".yaml") else f"{base}.yaml")
    return beside if beside.is_file() else resolve_preset(base)
