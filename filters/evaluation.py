"""`fusion filter-eval`: how well each filter catches known faults, measured on procedural ground truth.

The config's first stage generates clean samples (the procedural families, whose answers are true by
construction); the evaluation then makes corrupted samples on purpose, each from fresh samples of its own
so a corruption is never also a copy of a clean sample:

- ``wrong_answer``: one answer swapped to a wrong value (another option letter, yes/no flipped, another
  sample's answer to the same kind of question);
- ``mismatched_image``: the description paired with another sample's image;
- ``exact_duplicate``: a copy of a clean sample (text and pixels) under a later key;
- ``near_duplicate``: a copy with a light rewording (a word replaced, punctuation and case changed) and its
  image re-encoded as JPEG with a small brightness shift;
- ``garbage_text``: the description, or the caption and one answer, replaced by garbage of four kinds
  (letter soup, symbol soup, a degenerate repetition loop, mojibake with control characters);
- ``truncated_qa``: the conversation cut, either without its last answer or in the middle of it.

Every other stage of the config runs on all samples in config order, each judging every sample (a stage's
rejection is noted, then lifted, so the next stage sees the sample too; QA pairs a stage drops stay
dropped); run-wide stages decide over all samples in key order. A sample counts as flagged by a stage when
the stage rejected it or dropped one of its QA pairs. Precision of a filter on a corruption type is
caught / (caught + clean samples it flagged).
"""

from __future__ import annotations

import copy
import io
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from filters.qa_verdicts import DROPPED_KEY
from pipeline.config import RunConfig, StageSpec
from pipeline.planning import WorkUnit, derive_seed
from pipeline.record import STATUS_PENDING, SampleRecord
from pipeline.stage import GlobalStage, RunContext, Stage
from pipeline.stage_runner import StageRunner, build_stages, new_records

CORRUPTIONS = ("wrong_answer", "mismatched_image", "exact_duplicate", "near_duplicate", "garbage_text",
               "truncated_qa")
CLEAN = "clean"
RULE_KINDS = {"rules", "text_rules", "qa_rules"}
# A stage whose id ends so is a comparison row (e.g. the paper's exact thresholds), left out of the combined rows.
REFERENCE_SUFFIX = "_paper"
SPLIT = "train"
CORRUPT_OFFSET = 1_000_000  # positions of corrupted samples: after every clean one, so dedup keeps the original


@dataclass
class FilterReport:
    labels: dict[str, str]  # key -> corruption (or "clean")
    flagged: dict[str, set[str]]  # stage id -> keys it flagged
    errors: dict[str, int]
    groups: dict[str, list[str]] = field(default_factory=dict)  # name -> stage ids whose union is reported

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for label in self.labels.values():
            result[label] = result.get(label, 0) + 1
        return result

    def rows(self) -> list[dict[str, Any]]:
        """Per filter (and group): caught / total per corruption type, clean samples flagged, precision."""
        by_label: dict[str, set[str]] = {}
        for key, label in self.labels.items():
            by_label.setdefault(label, set()).add(key)
        rows = []
        entries = [(stage, keys) for stage, keys in self.flagged.items()]
        entries += [(name, set().union(*(self.flagged[s] for s in members)))
                    for name, members in self.groups.items() if members]
        for name, keys in entries:
            false_positives = len(keys & by_label.get(CLEAN, set()))
            row = {"filter": name, "clean_flagged": false_positives, "clean": len(by_label.get(CLEAN, ())),
                   "errors": self.errors.get(name, 0), "types": {}}
            for corruption in CORRUPTIONS:
                total = len(by_label.get(corruption, ()))
                caught = len(keys & by_label.get(corruption, set()))
                flagged = caught + false_positives
                row["types"][corruption] = {"caught": caught, "total": total,
                                            "recall": caught / total if total else None,
                                            "precision": caught / flagged if flagged else None}
            corrupted = {k for k, label in self.labels.items() if label != CLEAN}
            caught_any = len(keys & corrupted)
            row["overall"] = {"recall": caught_any / len(corrupted) if corrupted else None,
                              "precision": caught_any / len(keys) if keys else None}
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.counts(), "rows": self.rows()}


def evaluate_filters(config: RunConfig, per_family: int = 40, seed: int = 0) -> FilterReport:
    generator, *filters = config.stages
    if not filters:
        raise ValueError("the filter-eval config needs a generator stage followed by the filters to evaluate")
    context = _context(config)
    records, labels = corrupted_dataset(config, generator, context, per_family, seed)
    flagged, errors = run_filters(config, filters, context, records)
    combined = [s for s in filters if not s.stage_id.endswith(REFERENCE_SUFFIX)]
    groups = {"rules (any)": [s.stage_id for s in combined if s.name in RULE_KINDS],
              "dedup (any)": [s.stage_id for s in combined if s.name.startswith("dedup_")],
              "rules + dedup (any)": [s.stage_id for s in combined
                                      if s.name in RULE_KINDS or s.name.startswith("dedup_")],
              "all (any)": [s.stage_id for s in combined]}
    return FilterReport(labels, flagged, errors, groups)


def _context(config: RunConfig) -> RunContext:
    return RunContext(run_seed=config.seed, provenance={},
                      models={name: config.models[name].identity() for name in config.models_in_use()},
                      model_specs={name: config.models[name].model_dump(mode="json") for name in config.models_in_use()})


def _generate(config: RunConfig, generator: StageSpec, context: RunContext, category: str, first: int,
              count: int, seed: int) -> list[SampleRecord]:
    unit = WorkUnit(category, SPLIT, 0, first, count, derive_seed(config.seed, seed, category, SPLIT))
    records = new_records(unit, context)
    StageRunner(build_stages([generator], context, config.plugins), None).run(unit, records)
    failed = [r for r in records if r.is_rejected]
    if failed:
        raise ValueError(f"the generator rejected {failed[0].key}: {failed[0].reject_reason}")
    return records


def corrupted_dataset(config: RunConfig, generator: StageSpec, context: RunContext, per_family: int, seed: int
                      ) -> tuple[list[SampleRecord], dict[str, str]]:
    """Clean samples of every category plus about per_family/4 corrupted ones of each type (at least one)."""
    records, labels = [], {}
    per_type = max(1, per_family // 4)
    for category in config.categories:
        clean = _generate(config, generator, context, category, 0, per_family, seed)
        fresh = iter(_generate(config, generator, context, category, CORRUPT_OFFSET // 2,
                               3 * per_type * len(CORRUPTIONS), seed))
        rng = random.Random(derive_seed(seed, category, "corruptions"))
        position = CORRUPT_OFFSET
        for record in clean:
            records.append(record)
            labels[record.key] = CLEAN
        for corruption in CORRUPTIONS:
            for _ in range(per_type):
                if corruption in ("exact_duplicate", "near_duplicate"):
                    source = copy.deepcopy(rng.choice(clean))
                else:
                    source = next(fresh)
                corrupted = _corrupt(corruption, source, fresh, rng)
                corrupted.key = f"{category.lower()}_{SPLIT}_{position:07d}"
                position += 1
                records.append(corrupted)
                labels[corrupted.key] = corruption
    return records, labels


def _corrupt(kind: str, record: SampleRecord, fresh: Iterable[SampleRecord], rng: random.Random) -> SampleRecord:
    if kind == "wrong_answer":
        _swap_answer(record, next(iter(fresh)), rng)
    elif kind == "mismatched_image":
        record.image = next(iter(fresh)).image
    elif kind == "near_duplicate":
        record.description = _reword(record.description, rng)
        record.caption = _reword(record.caption, rng) if record.caption else record.caption
        record.image = _reencode(record.image)
    elif kind == "garbage_text":
        _garbage(record, rng)
    elif kind == "truncated_qa":
        turns = record.conversations
        if rng.random() < 0.5 or len(turns[-1]["value"]) < 4:
            record.conversations = turns[:-1]
        else:
            answer = turns[-1]["value"]
            cut = max(1, int(len(answer) * rng.uniform(0.3, 0.7)))
            record.conversations = [*turns[:-1], {"from": "gpt", "value": answer[:cut]}]
    return record


def _swap_answer(record: SampleRecord, donor: SampleRecord, rng: random.Random) -> None:
    pairs = len(record.conversations) // 2
    index = rng.randrange(pairs)
    answer = record.conversations[2 * index + 1]["value"]
    qa = record.metadata.get("qa", [])
    entry = qa[index] if index < len(qa) else {}
    if entry.get("options"):
        letters = [chr(ord("A") + i) for i in range(len(entry["options"].split("|")))]
        wrong = rng.choice([letter for letter in letters if letter != answer])
    elif answer in ("yes", "no"):
        wrong = "no" if answer == "yes" else "yes"
    else:
        candidates = [t["value"] for t in donor.conversations[1::2] if t["value"] != answer]
        wrong = rng.choice(candidates) if candidates else answer + " not"
    record.conversations[2 * index + 1] = {"from": "gpt", "value": wrong}


REWORDINGS = [("shows", "displays"), ("image", "picture"), ("small", "little"), ("large", "big"),
              ("is at", "sits at"), ("background", "backdrop"), ("two", "2"), ("three", "3")]


def _reword(text: str, rng: random.Random) -> str:
    applicable = [(a, b) for a, b in REWORDINGS if f" {a} " in f" {text} "]
    if applicable:
        old, new = rng.choice(applicable)
        text = f" {text} ".replace(f" {old} ", f" {new} ", 1).strip()
    return text.upper() if rng.random() < 0.3 else text.replace(".", " .").replace(",", "")


def _reencode(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    shifted = np.clip(image.astype(np.int16) + 3, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(shifted).save(buffer, format="JPEG", quality=85)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def garbage_text(rng: random.Random, words: int = 30) -> str:
    kind = rng.choice(["letters", "symbols", "loop", "mojibake"])
    if kind == "letters":
        return " ".join("".join(rng.choice("bcdfghjklmnpqrstvwxzaeiou") for _ in range(rng.randint(3, 9)))
                        for _ in range(words)).capitalize() + "."
    if kind == "symbols":
        return "".join(rng.choice("#$%&*+<>=@^|~{}[]\\/0123456789 ") for _ in range(words * 5))
    if kind == "loop":
        phrase = rng.choice(["the red circle", "and the", "is to the left of", "a blue"])
        return " ".join([phrase] * words)
    return "".join(rng.choice(["Ã©", "Ã¨", "â€™", "\x00", "\x1b", "\ufffd", "Â", " "]) for _ in range(words * 3))


def _garbage(record: SampleRecord, rng: random.Random) -> None:
    if record.description and rng.random() < 0.5:
        record.description = garbage_text(rng)
        return
    index = rng.randrange(len(record.conversations) // 2)
    text = garbage_text(rng)
    record.conversations[2 * index + 1] = {"from": "gpt", "value": text}
    if record.caption and record.conversations[1]["value"] == text:
        record.caption = record.seed_caption = text


def run_filters(config: RunConfig, filters: list[StageSpec], context: RunContext, records: list[SampleRecord]
                ) -> tuple[dict[str, set[str]], dict[str, int]]:
    """Stage id -> keys each filter flagged, and the errors each raised."""
    by_category: dict[str, list[SampleRecord]] = {}
    for record in sorted(records, key=lambda r: r.key):
        by_category.setdefault(record.category, []).append(record)
    flagged: dict[str, set[str]] = {}
    errors: dict[str, int] = {}
    for spec, stage in build_stages(filters, context, config.plugins):
        flagged[spec.stage_id], errors[spec.stage_id] = _judge(spec, stage, by_category)
    return flagged, errors


def _judge(spec: StageSpec, stage: Stage, by_category: dict[str, list[SampleRecord]]) -> tuple[set[str], int]:
    runner = StageRunner([(spec, stage)], None)
    flagged, errors = set(), 0
    for category, records in by_category.items():
        unit = WorkUnit(category, SPLIT, 0, 0, len(records), 0)
        runner.run(unit, records)
        for record in records:
            dropped = any(d["stage"] == spec.stage_id for d in record.metadata.get(DROPPED_KEY, []))
            if (record.is_rejected and record.reject_stage == spec.stage_id) or dropped:
                flagged.add(record.key)
                errors += record.is_error
            # Lift the rejection: the next filter judges every sample too.
            record.status, record.reject_stage, record.reject_reason = STATUS_PENDING, "", ""
    if isinstance(stage, GlobalStage):
        signatures = sorted((r.key, r.signatures[spec.stage_id]) for rs in by_category.values() for r in rs
                            if spec.stage_id in r.signatures)
        flagged |= set(stage.decide(signatures))
    return flagged, errors


def format_table(report: FilterReport) -> str:
    """Recall (caught/total) and precision per filter and corruption type, as a plain-text table."""
    counts = report.counts()
    header = ["filter", *CORRUPTIONS, "clean flagged", "overall R / P"]
    lines = [" | ".join(header)]
    for row in report.rows():
        cells = [row["filter"]]
        for corruption in CORRUPTIONS:
            t = row["types"][corruption]
            precision = "-" if t["precision"] is None else f"{t['precision']:.2f}"
            cells.append(f"{t['caught']}/{t['total']} P {precision}")
        cells.append(f"{row['clean_flagged']}/{row['clean']}")
        overall = row["overall"]
        cells.append(" / ".join("-" if v is None else f"{v:.2f}" for v in (overall["recall"], overall["precision"])))
        lines.append(" | ".join(cells))
    widths = [max(len(line.split(" | ")[i]) for line in lines) for i in range(len(header))]
    table = [" | ".join(cell.ljust(w) for cell, w in zip(line.split(" | "), widths, strict=True)) for line in lines]
    table.insert(1, "-+-".join("-" * w for w in widths))
    summary = ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
    return (f"samples: {summary}\nrecall as caught/total per corruption type, P = precision against the clean "
            f"samples the filter also flagged\n" + "\n".join(table))
