"""Versioned prompt templates: ``templates/<step>/<name>.v<N>.yaml``, each a ``system`` and a ``user`` Jinja text.

The newest version of a name is used unless a stage pins one; a template's sha256 (of its file) goes into
every request, hence into the cache key, and into each record's provenance. A stage may point
``template_dir`` at a folder of the same layout to use its own prompts.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

BUILTIN_TEMPLATE_DIR = Path(__file__).parent / "templates"
_FILE_NAME = re.compile(r"^(?P<name>[A-Za-z0-9_]+)\.v(?P<version>\d+)\.yaml$")


@dataclass(frozen=True)
class PromptTemplate:
    step: str
    name: str
    version: int
    sha256: str
    system: str
    user: str
    path: str

    @property
    def ref(self) -> str:
        """What provenance records: ``step/name.vN@sha256-prefix``."""
        return f"{self.step}/{self.name}.v{self.version}@{self.sha256[:16]}"

    def messages(self, **variables: Any) -> list[dict[str, str]]:
        """The chat messages, rendered strictly: a variable the template names but the caller lacks is an error."""
        return [{"role": "system", "content": _render(self.system, self.path, variables)},
                {"role": "user", "content": _render(self.user, self.path, variables)}]


def _render(text: str, path: str, variables: dict[str, Any]) -> str:
    import jinja2

    try:
        return _environment().from_string(text).render(**variables).strip()
    except jinja2.UndefinedError as error:
        raise KeyError(f"prompt template {path}: {error}") from None


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


def load_template(step: str, name: str, version: int | None = None, template_dir: str | Path | None = None
                  ) -> PromptTemplate:
    """The template ``step/name`` (newest version, or ``version``) from ``template_dir`` or the built-ins."""
    return _load(step, name, version, str(template_dir or BUILTIN_TEMPLATE_DIR))


@lru_cache(maxsize=512)
def _load(step: str, name: str, version: int | None, template_dir: str) -> PromptTemplate:
    folder = Path(template_dir) / step
    versions = {int(m["version"]): folder / p.name for p in sorted(folder.glob(f"{name}.v*.yaml"))
                if (m := _FILE_NAME.match(p.name)) and m["name"] == name}
    if not versions:
        raise FileNotFoundError(f"no prompt template {step}/{name}.v<N>.yaml in {template_dir}")
    chosen = version if version is not None else max(versions)
    if chosen not in versions:
        raise FileNotFoundError(f"prompt template {step}/{name} has no version {chosen} in {template_dir} "
                                f"(versions: {sorted(versions)})")
    path = versions[chosen]
    raw = path.read_bytes()
    data = yaml.safe_load(raw) or {}
    missing = [k for k in ("system", "user") if not isinstance(data.get(k), str)]
    if missing:
        raise ValueError(f"prompt template {path}: missing text field(s) {missing}")
    return PromptTemplate(step, name, chosen, hashlib.sha256(raw).hexdigest(), data["system"], data["user"], str(path))


def load_list(step: str, name: str, key: str, template_dir: str | Path | None = None) -> tuple[tuple[str, ...], str]:
    """A list of strings stored in a template file (e.g. the brief-caption requests), and the file's sha256."""
    folder = Path(template_dir or BUILTIN_TEMPLATE_DIR) / step
    candidates = sorted(folder.glob(f"{name}.v*.yaml"), key=lambda p: int(_FILE_NAME.match(p.name)["version"]))
    if not candidates:
        raise FileNotFoundError(f"no prompt file {step}/{name}.v<N>.yaml in {folder.parent}")
    raw = candidates[-1].read_bytes()
    values = (yaml.safe_load(raw) or {}).get(key)
    if not values or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{candidates[-1]}: {key!r} must be a non-empty list of strings")
    return tuple(values), hashlib.sha256(raw).hexdigest()
