"""Held-out evaluation: batched greedy generation on a held-out split, scored per category and per question type,
next to the chance and majority-answer baselines of the same split.

Every human/gpt pair of a held-out sample is one item: the prompt is the conversation up to that question (earlier
turns with their true answers), the reference is the gpt answer. The kind of an item comes from the record's
metadata when it names one (the procedural `qa` entries: question type, options, answer), else from the answer
format the question asks for. Baselines, per (category, question type) group of the same split:
  * chance: 1 / number of options (multiple choice), 1/2 (yes/no), 1 / distinct answers of the group (short);
    for captions the ROUGE-L of a random other reference of the group;
  * majority: always the group's most frequent answer (for captions, the constant caption that scores best
    against the group).

Multiple choice is also scored in the cloze formulation (OLMES, Gu et al. 2024; Robinson & Wingate 2022): the
question on its own (its image, no earlier turns) without its options, each option's text scored as the answer
by its log-likelihood per character, the most likely one chosen. Small models often know the answer long before
they can bind it to its option letter (multiple-choice symbol binding comes with scale: SmolLM2-135M-Instruct, told
"The triangle is red." in the prompt, picks the letter of "red" at chance, benchmarks/option_binding.py), so the
letter score alone cannot tell "does not know" from "cannot point at it". Its baselines: chance 1 / options;
majority always the option text most often right in the group. The learning check scores the letter, as the
question asks.
"""

from __future__ import annotations

import io
import json
import logging
import random
import statistics
import string
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from model.fusion import FusionModel
from pipeline.fileio import atomic_write_text
from pipeline.record import MULTIPLE_CHOICE_INSTRUCTION, SHORT_ANSWER_INSTRUCTION, SampleRecord
from pipeline.planning import derive_seed
from train.choices import LETTER, OPTION_AND_LETTER, AnswerForm, parse_options, with_answer_form
from train.config import EvalSection, SourceSpec
from train.eval_workers import EvalWorkers, as_workers, open_workers
from train.loader import image_member, shard_samples
from train.scoring import (
    CAPTION,
    EXACT_KINDS,
    LONG,
    METRIC_NAMES,
    MULTIPLE_CHOICE,
    SHORT,
    YES_NO,
    normalize_answer,
    option_letter,
    rouge_l,
    score,
    written_option,
)
from train.sources import list_shards

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
RESULTS_FILE = "results.json"
# The learning check of `fusion run`: the trained model must beat the better baseline by this many points here.
CHECK_MARGIN = 0.10
CHECKS = {"colour questions (color_of_shape)": lambda item: item.question_type == "color_of_shape",
          "multiple choice": lambda item: item.kind == MULTIPLE_CHOICE}


@dataclass
class EvalItem:
    key: str
    category: str
    turn: int
    question_type: str
    kind: str
    prompt: list[dict[str, str]]
    reference: str
    options: list[str]
    image: bytes | None = field(repr=False)
    prediction: str = ""
    score: float = 0.0
    chance: float = 0.0
    majority: float = 0.0
    cloze_choice: str | None = None  # multiple choice: the option the cloze formulation picks
    cloze_score: float | None = None
    cloze_majority: float | None = None

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("image")
        data["question"] = data.pop("prompt")[-1]["value"]
        return data


def item_kind(question: str, answer: str, qa: dict[str, Any] | None) -> tuple[str, str, list[str]]:
    """(kind, question type, options) of one turn."""
    options = [o for o in (qa or {}).get("options", "").split("|") if o] or parse_options(question)
    question_type = (qa or {}).get("question_type", "")
    if question_type == "caption":
        kind = CAPTION
    elif options or MULTIPLE_CHOICE_INSTRUCTION in question:
        kind = MULTIPLE_CHOICE
    elif normalize_answer(answer) in ("yes", "no"):
        kind = YES_NO
    elif SHORT_ANSWER_INSTRUCTION in question or len(answer.split()) <= 3:
        kind = SHORT
    else:
        kind = LONG
    return kind, question_type or kind, options


def held_out_items(dataset: str, split: str, max_per_category: int | None,
                   answer_form: AnswerForm = LETTER) -> list[EvalItem]:
    """Every question of the held-out split (the first `max_per_category` samples of each category); the earlier
    turns of a prompt answer multiple choice in the `answer_form` the model was trained on."""
    items: list[EvalItem] = []
    per_category: Counter = Counter()
    for shard in list_shards(SourceSpec(path=dataset, split=split)):
        for _, raw in shard_samples(shard, Counter()):
            if "json" not in raw:
                continue
            record = SampleRecord.from_json_dict(json.loads(raw["json"]))
            if max_per_category is not None and per_category[record.category] >= max_per_category:
                continue
            per_category[record.category] += 1
            image = image_member(raw)
            qa_entries = record.metadata.get("qa", []) if isinstance(record.metadata, dict) else []
            turns = record.conversations
            prompt_turns = with_answer_form(turns, answer_form)
            for turn in range(len(turns) // 2):
                question, answer = turns[2 * turn]["value"], turns[2 * turn + 1]["value"]
                qa = qa_entries[turn] if turn < len(qa_entries) else None
                kind, question_type, options = item_kind(question, answer, qa)
                reference = qa["answer"] if qa and kind != CAPTION else answer
                items.append(EvalItem(record.key, record.category, turn, question_type, kind,
                                      prompt_turns[: 2 * turn + 1], reference, options, image))
    if not items:
        raise FileNotFoundError(f"no held-out sample of split {split!r} in {dataset}")
    return items


def add_baselines(items: list[EvalItem], seed: int = 0) -> None:
    groups: dict[tuple[str, str], list[EvalItem]] = defaultdict(list)
    for item in items:
        groups[(item.category, item.question_type)].append(item)
    for (category, question_type), group in sorted(groups.items()):
        references = [item.reference for item in group]
        if group[0].kind in (CAPTION, LONG):
            rng = random.Random(derive_seed(seed, "chance", category, question_type))
            constant = max(references, key=lambda r: sum(rouge_l(r, other) for other in references))
            for index, item in enumerate(group):
                others = [r for j, r in enumerate(references) if j != index] or references
                item.chance = rouge_l(rng.choice(others), item.reference)
                item.majority = rouge_l(constant, item.reference)
            continue
        normalized = [normalize_answer(r) for r in references]
        most_common = Counter(normalized).most_common(1)[0][0]
        distinct = len(set(normalized))
        for item, answer in zip(group, normalized, strict=True):
            if item.kind == MULTIPLE_CHOICE:
                item.chance = 1 / max(1, len(item.options))
            elif item.kind == YES_NO:
                item.chance = 0.5
            else:
                item.chance = 1 / distinct
            item.majority = float(answer == most_common)
        if group[0].kind == MULTIPLE_CHOICE:
            contents = [normalize_answer(correct_option(item)) for item in group]
            most_common = Counter(contents).most_common(1)[0][0]
            for item, content in zip(group, contents, strict=True):
                item.cloze_majority = float(content == most_common)


def correct_option(item: EvalItem) -> str:
    """The text of a multiple-choice item's right option, named by its letter or its text ("" when it names none)."""
    letter = option_letter(item.reference, item.options)
    return item.options[ord(letter) - ord("A")] if letter else ""


def cloze_question(item: EvalItem) -> dict[str, str]:
    """A multiple-choice item's question on its own (with its image, without the earlier turns), its option lines and
    letter instruction replaced by the short-answer instruction."""
    kept = [line for line in item.prompt[-1]["value"].replace("<image>", "").splitlines()
            if line.strip() and not parse_options(line) and line.strip() != MULTIPLE_CHOICE_INSTRUCTION]
    text = "\n".join([*kept, SHORT_ANSWER_INSTRUCTION])
    return {"from": "human", "value": "<image>\n" + text if item.image else text}


def score_options_by_likelihood(model: FusionModel | EvalWorkers, items: list[EvalItem], config: EvalSection,
                                progress: bool = True) -> None:
    """The cloze formulation of every multiple-choice item: the option whose text is most likely per character."""
    chosen = [item for item in items if item.kind == MULTIPLE_CHOICE and item.options]
    pairs = [(item, option) for item in chosen for option in item.options]
    chunks = [pairs[start:start + config.batch_size] for start in range(0, len(pairs), config.batch_size)]
    likelihoods = []
    bar = tqdm(total=len(pairs), desc="multiple choice (cloze)", unit="option", disable=not progress)
    for chunk, scored in zip(chunks, as_workers(model).map(option_likelihoods, chunks), strict=True):
        likelihoods += scored
        bar.update(len(chunk))
    bar.close()
    position = 0
    for item in chosen:
        per_option = likelihoods[position:position + len(item.options)]
        position += len(item.options)
        item.cloze_choice = item.options[max(range(len(per_option)), key=per_option.__getitem__)]
        item.cloze_score = float(normalize_answer(item.cloze_choice) == normalize_answer(correct_option(item)))


@torch.no_grad()
def option_likelihoods(model: FusionModel, chunk: list[tuple[EvalItem, str]]) -> list[float]:
    """Log-likelihood per character of each (item, option) pair's option as the answer to its cloze question."""
    model.eval()
    # a question's options are neighbours: its image is decoded once per batch, not once per option
    decoded = {id(item): Image.open(io.BytesIO(item.image)).convert("RGB") if item.image else None
               for item, _ in chunk}
    images = [decoded[id(item)] for item, _ in chunk]
    conversations = [[cloze_question(item), {"from": "gpt", "value": option}] for item, option in chunk]
    scored = model.answer_log_likelihoods(images, conversations, batch_size=len(chunk))
    return [s.log_probability / max(1, len(option)) for s, (_, option) in zip(scored, chunk, strict=True)]


def fit_prompt(builder, prompt: list[dict[str, str]], has_image: bool) -> list[dict[str, str]]:
    """The prompt with its oldest question/answer pairs dropped until it fits the model's max_length (the image
    placeholder moves to the first question kept); the question itself is never cut."""
    from model.sequence import SequenceTooLongError

    latent_count = builder.latent_count(for_generation=True)
    while True:
        try:
            builder.assemble(builder.tokenize(prompt, has_image=has_image, for_generation=True),
                             has_image=has_image, latent_count=latent_count)
            return prompt
        except SequenceTooLongError:
            if len(prompt) <= 1:
                raise
            first = prompt[2]["value"].replace("<image>\n", "").replace("<image>", "")
            prompt = [{**prompt[2], "value": ("<image>\n" if has_image else "") + first}, *prompt[3:]]


def generate_answers(model: FusionModel | EvalWorkers, items: list[EvalItem], config: EvalSection,
                     progress: bool = True, answer_form: AnswerForm = LETTER) -> None:
    def writes_text(item: EvalItem) -> bool:  # an option's text before its letter is as long as a long answer may be
        return item.kind in (CAPTION, LONG) or (item.kind == MULTIPLE_CHOICE and answer_form == OPTION_AND_LETTER)

    order = sorted(range(len(items)), key=lambda i: (writes_text(items[i]), len(str(items[i].prompt))))
    chunks = [[items[i] for i in order[start:start + config.batch_size]]
              for start in range(0, len(order), config.batch_size)]
    jobs = [(chunk, config.max_new_tokens if any(writes_text(item) for item in chunk)
             else config.max_new_tokens_short) for chunk in chunks]
    bar = tqdm(total=len(items), desc="evaluate", unit="question", disable=not progress)
    for (chunk, _), answers in zip(jobs, as_workers(model).map(answer_batch, jobs, unpack=True), strict=True):
        for item, answer in zip(chunk, answers, strict=True):
            item.prediction = answer
            item.score = score(item.kind, answer, item.reference, item.options)
        bar.update(len(chunk))
    bar.close()


@torch.no_grad()
def answer_batch(model: FusionModel, chunk: list[EvalItem], max_new_tokens: int) -> list[str]:
    """Greedy answers to one batch of items, each prompt fitted to the model's max_length."""
    model.eval()
    images = [Image.open(io.BytesIO(item.image)).convert("RGB") if item.image else None for item in chunk]
    prompts = [fit_prompt(model.sequence_builder, item.prompt, item.image is not None) for item in chunk]
    return model.generate(images, prompts, max_new_tokens=max_new_tokens)


def _beside_baselines(model: Sequence[float], chance: Sequence[float], majority: Sequence[float]) -> dict[str, Any]:
    """Mean model score of a group beside its mean chance and majority baselines, and its margin over the better."""
    scores = {"model": statistics.fmean(model), "chance": statistics.fmean(chance),
              "majority": statistics.fmean(majority)}
    return {"n": len(model), **scores, "margin": scores["model"] - max(scores["chance"], scores["majority"])}


def summarise(items: Sequence[EvalItem]) -> dict[str, Any]:
    def row(group: Sequence[EvalItem], **labels: str) -> dict[str, Any]:
        kinds = sorted({item.kind for item in group})
        return {**labels, "metric": " / ".join(METRIC_NAMES[k] for k in kinds),
                **_beside_baselines([i.score for i in group], [i.chance for i in group], [i.majority for i in group])}

    categories, question_types = defaultdict(list), defaultdict(list)
    for item in items:
        # a category mixing exact answers and captions is reported per kind of metric, never averaged across them
        metric_group = "captions" if item.kind in (CAPTION, LONG) else "answers"
        categories[(item.category, metric_group)].append(item)
        question_types[(item.category, item.question_type)].append(item)
    checks = []
    for name, selects in CHECKS.items():
        chosen = [item for item in items if selects(item)]
        if chosen:
            result = row(chosen, check=name)
            # "at least 10 points": a margin of exactly 10 points passes though its float is a hair below 0.1
            result["passed"] = result["margin"] >= CHECK_MARGIN - 1e-9
            checks.append(result)
    cloze = [item for item in items if item.cloze_score is not None]
    return {
        "categories": [row(group, category=c) for (c, _), group in sorted(categories.items())],
        "question_types": [row(group, category=c, question_type=q) for (c, q), group in
                           sorted(question_types.items())],
        "checks": checks,
        "check_margin": CHECK_MARGIN,
        "multiple_choice_cloze": cloze_rows(cloze) if cloze else None,
        "items": len(items),
        "exact_items": sum(item.kind in EXACT_KINDS for item in items),
    }


def cloze_rows(items: Sequence[EvalItem]) -> list[dict[str, Any]]:
    """Cloze accuracy of multiple-choice items beside their letter accuracy: all of them, then per question type."""
    def row(group: Sequence[EvalItem], question_type: str) -> dict[str, Any]:
        return {"question_type": question_type, "letter": statistics.fmean(i.score for i in group),
                **option_form_shares(group),
                **_beside_baselines([i.cloze_score for i in group], [1 / len(i.options) for i in group],
                                    [i.cloze_majority for i in group])}

    by_type: dict[str, list[EvalItem]] = defaultdict(list)
    for item in items:
        by_type[item.question_type].append(item)
    return [row(items, "all"), *(row(group, kind) for kind, group in sorted(by_type.items()))]


def option_form_shares(items: Sequence[EvalItem]) -> dict[str, float | None]:
    """For answers in the option form ("red: B"), what a letter's miss comes from: `text`, how often the option text
    written is the right one (of all the items), and `agrees`, how often the letter written after it is that text's
    own letter (of the items that wrote an option's text and a letter): the lookup. None without such answers."""
    answered = []  # (item, the letter of the option text written, the letter written after it)
    for item in items:
        found = written_option(item.prediction, item.options)
        if found is not None:
            answered.append((item, string.ascii_uppercase[found[0]], found[1]))
    if not answered:
        return {"text": None, "agrees": None}
    return {"text": sum(text == option_letter(item.reference, item.options) for item, text, _ in answered) / len(items),
            "agrees": statistics.fmean(letter == text for _, text, letter in answered)}


def evaluate(model: FusionModel | str | Path, dataset: str, out: Path, config: EvalSection, *, seed: int = 0,
             progress: bool = True, answer_form: AnswerForm = LETTER) -> dict[str, Any]:
    """Evaluate a model (or checkpoint folder) on the held-out split of `dataset`; writes predictions and results.
    `answer_form`: how the model was trained to answer multiple choice (`data.multiple_choice_answer`)."""
    items = held_out_items(dataset, config.split, config.max_samples_per_category, answer_form)
    add_baselines(items, seed)
    logger.info("evaluating on %d held-out questions of %s (split %s)", len(items), dataset, config.split)
    with open_workers(model, config.processes) as workers:
        generate_answers(workers, items, config, progress, answer_form)
        if config.cloze_multiple_choice:
            score_options_by_likelihood(workers, items, config, progress)
    results = summarise(items)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PREDICTIONS_FILE, "".join(json.dumps(item.record()) + "\n" for item in items))
    atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=2))
    return results


def format_table(results: dict[str, Any]) -> str:
    """The per-category table with its baselines, the learning checks, as plain text for the console."""
    lines = [f"{'category':<22}{'metric':<26}{'n':>6}{'model':>8}{'chance':>8}{'majority':>9}{'margin':>8}"]
    for row in results["categories"]:
        lines.append(f"{row['category']:<22}{row['metric'][:25]:<26}{row['n']:>6}{row['model']:>8.1%}"
                     f"{row['chance']:>8.1%}{row['majority']:>9.1%}{row['margin']:>+8.1%}")
    for check in results["checks"]:
        verdict = "PASS" if check["passed"] else "FAIL"
        lines.append(f"check {check['check']}: model {check['model']:.1%} vs better baseline "
                     f"{max(check['chance'], check['majority']):.1%} -> {check['margin']:+.1%} "
                     f"(needs {results['check_margin']:+.0%}) {verdict}")
    if results.get("multiple_choice_cloze"):
        overall = results["multiple_choice_cloze"][0]
        lines.append(f"multiple choice as cloze (option text by likelihood, not scored by the check): model "
                     f"{overall['model']:.1%} vs chance {overall['chance']:.1%}, majority {overall['majority']:.1%} "
                     f"(by letter: {overall['letter']:.1%})")
        if overall.get("agrees") is not None:
            lines.append(f"multiple choice in the option form: the option text written right {overall['text']:.1%}, "
                         f"the letter after it that text's own {overall['agrees']:.1%}")
    return "\n".join(lines)
