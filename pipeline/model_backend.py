"""Model backends: what loads a model once and serves batched calls to the stages that name it.

A backend is registered by name and configured under ``models:`` in the run config; stages name a model,
never a backend, so several stages share one loaded model (one engine per replica: a 70B LLM loads once and
batches calls from the description, QA, statement and judge stages together).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pipeline.registry import Registry
from pipeline.stage import StageParams


class ModelBackend(ABC):
    """Loads in ``__init__``; every public method taking a list of items and returning one result per item
    can be called by stages through ``unit.models[name].call(method, items)``."""

    kind: ClassVar[str] = ""
    Params: ClassVar[type[StageParams]] = StageParams

    def __init__(self, params: StageParams) -> None:
        self.params = params

    @classmethod
    def identity(cls, params: StageParams) -> dict[str, Any]:
        """What names the model's weights, for provenance and cache keys, computed without loading it."""
        return {"backend": cls.kind, "model": getattr(params, "path", None) or cls.kind,
                "revision": model_revision(getattr(params, "path", None), getattr(params, "revision", None))}


def model_revision(path: str | None, revision: str | None = None) -> str:
    """A Hub revision as given, or for a local folder a hash of its config files and its weight files' names
    and sizes (cheap, and it changes when the weights are replaced)."""
    if revision:
        return revision
    if not path or not Path(path).is_dir():
        return "unpinned"
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if file.suffix in (".json", ".txt", ".model", ".jinja", ".yaml"):
            digest.update(relative.encode() + file.read_bytes())
        else:
            digest.update(json.dumps([relative, file.stat().st_size]).encode())
    return f"local-{digest.hexdigest()[:16]}"


# Built-in backends, imported when first named; plugins register their own with @register_backend.
BUILTIN_BACKENDS: dict[str, str] = {
    "open_clip": "filters.clip_backend:OpenClipBackend",
    "sentence_transformers": "filters.sentence_backend:SentenceBackend",
    "transformers_llm": "generators.llm.transformers_backend:TransformersLLM",
    "vllm": "generators.llm.vllm_backend:VLLMBackend",
    "transformers_vlm": "generators.llm.transformers_vlm:TransformersVLM",
    "diffusers": "generators.diffusion.diffusers_backend:DiffusersBackend",
}
MODEL_BACKENDS: Registry[type[ModelBackend]] = Registry("model backend", BUILTIN_BACKENDS)

B = TypeVar("B", bound=type[ModelBackend])


def register_backend(name: str) -> Callable[[B], B]:
    def add(cls: B) -> B:
        cls.kind = name
        return MODEL_BACKENDS.register(name)(cls)

    return add
