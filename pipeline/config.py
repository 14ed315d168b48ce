"""Typed run configuration, loaded from YAML presets in ``configs/`` with ``--set a.b=value`` overrides.

A preset may name another as ``base:``; it is deep-merged underneath. Validation errors name the file and
the dotted field at fault.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.stage import STAGES, StageParams

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESET_DIR = REPO_ROOT / "configs"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RayConfig(Strict):
    address: str | None = Field(None, description="Ray cluster address; None uses RAY_ADDRESS or an embedded local Ray")
    num_cpus: int | None = Field(
        None, ge=1, description="CPU slots of the embedded local Ray, i.e. units worked on at once; None: every core"
    )
    temp_dir: str | None = Field(None, description="Session folder of the embedded local Ray")
    progress: bool = True


class DatasetConfig(Strict):
    pretty_name: str = "FUSION synthetic QA"
    license: str = "cc-by-4.0"
    language: list[str] = ["en"]
    tags: list[str] = ["synthetic", "multimodal", "visual-question-answering", "webdataset"]
    unit_size: int = Field(256, ge=1, description="Samples per work unit; one unit is one shard")
    jpeg_quality: int = Field(90, ge=1, le=100)


class CategoryConfig(Strict):
    train: int = Field(0, ge=0, description="Samples to synthesize for the train split")
    test: int = Field(0, ge=0, description="Samples to synthesize for the held-out test split")

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.train, "test": self.test}


class StageResources(Strict):
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    concurrency: int | None = Field(
        None, ge=1, description="Actors of a model stage (default 1); for other stages, a cap on tasks at once"
    )


class StageSpec(Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    resources: StageResources = Field(default_factory=StageResources)

    @field_validator("name")
    @classmethod
    def _known_stage(cls, name: str) -> str:
        ensure_builtin_stages()
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; known stages: {', '.join(STAGES.names())}")
        return name

    @model_validator(mode="after")
    def _valid_params(self) -> StageSpec:
        self.typed_params()
        return self

    def typed_params(self) -> StageParams:
        stage_cls = STAGES.get(self.name)
        try:
            return stage_cls.Params.model_validate(self.params)
        except ValidationError as error:
            details = "; ".join(f"params.{_dotted(e['loc'])}: {e['msg']}" for e in error.errors())
            raise ValueError(f"stage {self.name!r}: {details}") from None


class RunConfig(Strict):
    name: str
    seed: int = 0
    # Modules imported before the stages are resolved, on the driver and on every worker; a module
    # outside this project registers its own stages this way.
    plugins: list[str] = Field(default_factory=list)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    categories: dict[str, CategoryConfig]
    stages: list[StageSpec] = Field(min_length=1)
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
    def _some_samples(cls, categories: dict[str, CategoryConfig]) -> dict[str, CategoryConfig]:
        if not categories:
            raise ValueError("at least one category is required")
        for name in categories:
            if not name.replace("_", "").isalnum():
                raise ValueError(f"category name {name!r} must be letters, digits and underscores")
        return categories

    def data_fields(self) -> dict[str, Any]:
        """The fields that decide the dataset's content (Ray placement does not)."""
        return self.model_dump(mode="json", exclude={"ray", "train"})


def ensure_builtin_stages() -> None:
    """Import the modules whose stages register themselves."""
    import filters.rules  # noqa: F401
    import generators.procedural  # noqa: F401


def import_plugins(modules: list[str]) -> None:
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
    raw = _read_with_bases(path, seen=())
    for override in overrides or []:
        _apply_override(raw, override)
    return validate_config(raw, source=str(path))


def validate_config(raw: dict[str, Any], source: str) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        lines = [f"{source}: field '{_dotted(e['loc']) or '<root>'}': {e['msg']}" for e in error.errors()]
        raise ConfigError("invalid config\n  " + "\n  ".join(lines)) from None


def save_config(config: RunConfig, path: Path) -> None:
    from pipeline.fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def _read_with_bases(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' forms a cycle through {[str(p) for p in seen]}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / f"{base}.yaml") if not str(base).endswith(".yaml") else path.parent / base
    if not base_path.is_file():
        base_path = resolve_preset(base)
    return _deep_merge(_read_with_bases(base_path, seen + (path.resolve(),)), data)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply ``a.b.0.c=value``; the value is parsed as YAML, list items are addressed by index."""
    dotted, sep, text = override.partition("=")
    if not sep or not dotted:
        raise ConfigError(f"override {override!r} must look like key.path=value")
    value = yaml.safe_load(text) if text else ""
    parts = dotted.split(".")
    node: Any = raw
    for part in parts[:-1]:
        node = _child(node, part, dotted)
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, dotted)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {override!r}: {'.'.join(parts[:-1])} is not a mapping or list")


def _child(node: Any, part: str, dotted: str) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, part, dotted)]
    if isinstance(node, dict):
        if part not in node or node[part] is None:
            node[part] = {}
        return node[part]
    raise ConfigError(f"override {dotted!r}: cannot descend into {part!r} of a {type(node).__name__}")


def _list_index(node: list, part: str, dotted: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"override {dotted!r}: {part!r} is not an index of a list of {len(node)} items")
    return int(part)


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)
