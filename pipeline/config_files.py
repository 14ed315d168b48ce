"""YAML presets with `base:` inheritance, `key.path=value` overrides and validation messages that name the field.

One reader for both config kinds (the run config in pipeline/config.py, the training config in train/config.py);
each passes its own error class, so a bad file is reported as the kind of config it is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def read_with_bases(path: Path, resolve_base: Callable[[Path, str], Path], error: type[Exception],
                    seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping in `path`, merged over its `base:` (found by `resolve_base(path, base)`), recursively."""
    if path.resolve() in seen:
        raise error(f"{path}: 'base' forms a cycle through {[str(p) for p in seen]}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as problem:
        raise error(f"{path}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    parent = read_with_bases(resolve_base(path, str(base)), resolve_base, error, seen + (path.resolve(),))
    return deep_merge(parent, data)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_override(raw: dict[str, Any], override: str, error: type[Exception]) -> None:
    """Apply `a.b.0.c=value`; the value is parsed as YAML, list items are addressed by index."""
    dotted, sep, text = override.partition("=")
    if not sep or not dotted:
        raise error(f"override {override!r} must look like key.path=value")
    value = yaml.safe_load(text) if text else ""
    parts = dotted.split(".")
    node: Any = raw
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[_list_index(node, part, dotted, error)]
        elif isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise error(f"override {dotted!r}: cannot descend into {part!r} of a {type(node).__name__}")
    if isinstance(node, list):
        node[_list_index(node, parts[-1], dotted, error)] = value
    elif isinstance(node, dict):
        node[parts[-1]] = value
    else:
        raise error(f"override {override!r}: {'.'.join(parts[:-1])} is not a mapping or list")


def _list_index(node: list, part: str, dotted: str, error: type[Exception]) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise error(f"override {dotted!r}: {part!r} is not an index of a list of {len(node)} items")
    return int(part)


def dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


def validate_model(model: type[M], raw: dict[str, Any], source: str, what: str,
                                 error: type[Exception]) -> M:
    """`model` from `raw`, or `error` listing every invalid field as `source: field 'a.b': message`."""
    try:
        return model.model_validate(raw)
    except ValidationError as problem:
        lines = [f"{source}: field '{dotted(e['loc']) or '<root>'}': {e['msg']}" for e in problem.errors()]
        raise error(f"invalid {what}\n  " + "\n  ".join(lines)) from None
