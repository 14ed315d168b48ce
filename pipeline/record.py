"""The sample record: the one contract between every stage and the shard a trainer reads.

A record moves through the stages of its work unit and lands in a shard as ``KEY.json`` (every field but
the images), ``KEY.<jpg|png|webp>`` (the image, encoded once by the writer) and ``KEY.txt`` (the
description, or the caption when there is none). Between stages the image stays a lossless RGB array, so
scoring stages see exactly what the generator made.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KEY_PATTERN = re.compile(r"^[a-z0-9_]+$")
IMAGE_TOKEN = "<image>"
# The paper's answer-format instructions; a question ending with one promises an answer of that form.
SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."

STATUS_PENDING = "pending"
STATUS_ACCEPTED = "accepted"
STATUS_REJECTED = "rejected"
ERROR_REASON_PREFIX = "error:"


@dataclass
class ImageCandidate:
    """One of several images rendered for a record (best-of-N); a chooser stage keeps one."""

    seed: int
    image: np.ndarray = field(repr=False)


@dataclass
class SampleRecord:
    key: str
    category: str
    split: str
    seed: int
    seed_caption: str = ""
    caption: str = ""
    description: str = ""
    # LLaVA style: [{"from": "human" | "gpt", "value": ...}]; the first human turn starts with "<image>\n".
    conversations: list[dict[str, str]] = field(default_factory=list)
    # Every score computed, named "<stage id>/<metric>" with its model and scale in the name where one applies.
    scores: dict[str, float] = field(default_factory=dict)
    # Run-wide facts plus, under "stages", what each stage that saw the record used (models, templates, settings).
    provenance: dict[str, Any] = field(default_factory=dict)
    # Generator-specific facts, e.g. the procedural scene graphs that make the answers true by construction.
    metadata: dict[str, Any] = field(default_factory=dict)
    status: str = STATUS_PENDING
    reject_stage: str = ""
    reject_reason: str = ""
    # Lossless (H, W, 3) uint8 RGB; never part of the JSON member.
    image: np.ndarray | None = field(default=None, repr=False)
    # Best-of-N images awaiting a chooser; never part of the JSON member.
    candidates: list[ImageCandidate] = field(default_factory=list, repr=False)
    # What run-wide stages (dedup, top-fraction) decide on, by stage id; stored with the unit, not in the JSON.
    signatures: dict[str, bytes] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not KEY_PATTERN.match(self.key):
            raise ValueError(f"sample key {self.key!r} must match {KEY_PATTERN.pattern} (WebDataset splits keys at dots)")

    @property
    def is_rejected(self) -> bool:
        return self.status == STATUS_REJECTED

    @property
    def is_error(self) -> bool:
        return self.is_rejected and self.reject_reason.startswith(ERROR_REASON_PREFIX)

    def reject(self, stage: str, reason: str) -> None:
        """Mark the record rejected; the first rejection wins so the reason names the stage that decided."""
        if self.is_rejected:
            return
        self.status = STATUS_REJECTED
        self.reject_stage = stage
        self.reject_reason = reason

    def reject_with_error(self, stage: str, error: BaseException) -> None:
        message = " ".join(str(error).split())[:500]
        self.reject(stage, f"{ERROR_REASON_PREFIX}{type(error).__name__}: {message}")

    def text(self) -> str:
        """What goes into ``KEY.txt``."""
        return self.description or self.caption

    def snapshot(self) -> bytes:
        """The record's state, to undo what a failed stage did to it; images are shared, not copied (stages
        replace them, never edit them in place). Pickling is cheap and only a failure pays for unpickling."""
        state = {name: getattr(self, name) for name in _JSON_FIELDS}
        return pickle.dumps((state, self.image, list(self.candidates), dict(self.signatures)),
                            protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, snapshot: bytes) -> None:
        state, image, candidates, signatures = pickle.loads(snapshot)
        for name, value in state.items():
            setattr(self, name, value)
        self.image, self.candidates, self.signatures = image, candidates, signatures

    def to_json_dict(self) -> dict[str, Any]:
        """The ``KEY.json`` member: every field but the images, in one schema for the whole dataset.

        Hugging Face ``datasets`` fixes a dataset's features from its first samples and drops keys that later
        samples add, so nothing here may vary in shape: ``scores`` becomes a list of ``{"name", "value"}``
        pairs sorted by name, and the free-form ``provenance`` and ``metadata`` maps become JSON strings.
        """
        data = {name: getattr(self, name) for name in _JSON_FIELDS}
        data["scores"] = [{"name": name, "value": float(value)} for name, value in sorted(self.scores.items())]
        for name in _JSON_STRING_FIELDS:
            data[name] = canonical_json_text(data[name])
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], image: np.ndarray | None = None) -> SampleRecord:
        """The record of a ``KEY.json`` member (the inverse of ``to_json_dict``)."""
        unknown = set(data) - set(_JSON_FIELDS)
        if unknown:
            raise ValueError(f"record {data.get('key')!r} has unknown fields {sorted(unknown)}")
        fields = dict(data)
        try:
            fields["scores"] = {entry["name"]: float(entry["value"]) for entry in data.get("scores", [])}
            for name in _JSON_STRING_FIELDS:
                if isinstance(fields.get(name), str):
                    fields[name] = json.loads(fields[name])
        except (TypeError, KeyError, ValueError) as error:
            raise ValueError(f"record {data.get('key')!r} is malformed: {error}") from None
        return cls(**fields, image=image)


def canonical_json_text(data: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: the same data always gives the same text."""
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


_JSON_FIELDS = tuple(f.name for f in dataclasses.fields(SampleRecord)
                     if f.name not in ("image", "candidates", "signatures"))
_JSON_STRING_FIELDS = ("provenance", "metadata")
