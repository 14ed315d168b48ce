"""Per-QA verdicts: a failed QA drops that QA, and the sample survives with fewer QAs if it still has enough.

A verifier stage (the rule stage ``qa_rules`` here; an LLM or VLM judge plugs in the same way) only produces
one ``QAVerdict`` per QA pair; ``apply_qa_verdicts`` does the rest, identically for every verifier:

- every verdict goes to ``metadata["qa_verdicts"]`` as ``{"stage", "qa", "verdict", "reason"}``, where ``qa``
  is the pair's index in the conversation as generated (stable however many earlier stages dropped pairs);
- a failed pair leaves the conversation (the ``<image>`` token moves to the new first question) and goes to
  ``metadata["qa_dropped"]`` with its question, answer, stage and reason; the generator's per-QA metadata
  (``metadata["qa"]``, when it has one entry per pair) is dropped alongside, so it stays aligned;
- ``metadata["qa_origin"]`` lists the generated index of each pair still in the conversation;
- fewer than ``min_qa`` passing pairs reject the sample (its conversation left whole, for inspection).

The three lists are written by every verifier on every sample it sees, so the metadata has one shape.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field

from pipeline.record import IMAGE_TOKEN, SampleRecord
from pipeline.stage import Stage, StageParams, UnitContext

VERDICTS_KEY = "qa_verdicts"
DROPPED_KEY = "qa_dropped"
ORIGIN_KEY = "qa_origin"
PASS, FAIL = "pass", "fail"


@dataclass(frozen=True)
class QAVerdict:
    """A verifier's decision on the pair at ``index`` of the conversation it was given."""

    index: int
    passed: bool
    reason: str = ""


class QAVerifierParams(StageParams):
    min_qa: int = Field(1, ge=0, description="QA pairs that must pass for the sample to survive")


def qa_pairs(record: SampleRecord) -> list[tuple[str, str]]:
    """(question, answer) of each human/gpt pair, the image token taken off the first question."""
    turns = record.conversations
    pairs = []
    for index in range(0, len(turns) - 1, 2):
        question = turns[index]["value"]
        if index == 0 and question.startswith(IMAGE_TOKEN + "\n"):
            question = question[len(IMAGE_TOKEN) + 1:]
        pairs.append((question, turns[index + 1]["value"]))
    return pairs


def qa_origin(record: SampleRecord) -> list[int]:
    origin = record.metadata.get(ORIGIN_KEY)
    pairs = len(record.conversations) // 2
    return list(origin) if isinstance(origin, list) and len(origin) == pairs else list(range(pairs))


def apply_qa_verdicts(record: SampleRecord, stage_id: str, verdicts: list[QAVerdict], min_qa: int) -> None:
    """Record ``verdicts`` (one per pair of ``record``'s conversation), drop failed pairs, and reject the
    record when fewer than ``min_qa`` pairs pass."""
    pairs = qa_pairs(record)
    if sorted(v.index for v in verdicts) != list(range(len(pairs))):
        raise ValueError(f"{stage_id}: expected one verdict per QA pair (0..{len(pairs) - 1}) of {record.key}, "
                         f"got indices {[v.index for v in verdicts]}")
    origin = qa_origin(record)
    metadata = record.metadata
    metadata.setdefault(VERDICTS_KEY, [])
    metadata.setdefault(DROPPED_KEY, [])
    for verdict in sorted(verdicts, key=lambda v: v.index):
        metadata[VERDICTS_KEY].append({"stage": stage_id, "qa": origin[verdict.index],
                                       "verdict": PASS if verdict.passed else FAIL, "reason": verdict.reason})
    failed = [v for v in sorted(verdicts, key=lambda v: v.index) if not v.passed]
    kept = [i for i in range(len(pairs)) if i not in {v.index for v in failed}]
    if len(kept) < min_qa:
        metadata[ORIGIN_KEY] = origin
        first = failed[0] if failed else None
        detail = f"; first failure: qa {origin[first.index]}: {first.reason}" if first else ""
        record.reject(stage_id, f"too_few_qa: {len(kept)} of {len(pairs)} QA pairs passed, {min_qa} needed{detail}")
        return
    for verdict in failed:
        question, answer = pairs[verdict.index]
        metadata[DROPPED_KEY].append({"stage": stage_id, "qa": origin[verdict.index], "reason": verdict.reason,
                                      "question": question, "answer": answer})
    if failed:
        _keep_pairs(record, kept, len(pairs))
    metadata[ORIGIN_KEY] = [origin[i] for i in kept]


def _keep_pairs(record: SampleRecord, kept: list[int], total: int) -> None:
    pairs = qa_pairs(record)
    turns = []
    for position, index in enumerate(kept):
        question, answer = pairs[index]
        if position == 0:
            question = f"{IMAGE_TOKEN}\n{question}"
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    record.conversations = turns
    generated = record.metadata.get("qa")
    if isinstance(generated, list) and len(generated) == total:
        record.metadata["qa"] = [generated[i] for i in kept]


class QAVerifier(Stage):
    """A stage that judges each QA pair; subclasses implement ``judge``, the rest is ``apply_qa_verdicts``.

    Scores: ``<id>/qa_passed`` and ``<id>/qa_failed`` (pairs judged on the sample)."""

    role: ClassVar[str] = "filter"
    Params: ClassVar[type[StageParams]] = QAVerifierParams

    @abstractmethod
    def judge(self, records: list[SampleRecord], unit: UnitContext) -> list[list[QAVerdict] | None]:
        """One list of verdicts per record, one verdict per QA pair of its conversation; None for a record
        the verifier rejected itself (e.g. a judge that gave no valid answer)."""

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        for record, verdicts in zip(records, self.judge(records, unit), strict=True):
            if verdicts is None:
                if not record.is_rejected:
                    raise RuntimeError(f"{self.id}: no verdicts for {record.key}, which it did not reject")
                continue
            passed = sum(v.passed for v in verdicts)
            record.scores[f"{self.id}/qa_passed"] = float(passed)
            record.scores[f"{self.id}/qa_failed"] = float(len(verdicts) - passed)
            apply_qa_verdicts(record, self.id, verdicts, self.params.min_qa)
