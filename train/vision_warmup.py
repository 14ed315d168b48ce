"""Vision warm-up: teach a vision tower built from scratch to see procedural scenes before the FUSION training.

The paper starts from a pretrained SigLIP; offline there is none to download, and a random tower trained only
through the language loss learns the image slowly (measured on the demo: the QA loss with each sample's own image
equals the loss with another sample's image after 800 steps). The procedural records carry their scene graphs,
so the tower first learns dense targets drawn from them (``generators/procedural/labels.py``): per patch the
colour and shape shares, the shape of the object centred in the patch, and per image the background style and
the number of shapes. Small linear heads on the tower's connector input are trained with it and then dropped.

The tower is warmed the way the training runs it: with TUNE, each image is encoded beside its own conversation's
ViT text. Warmed without it, the tower met the questions' text (up to 96 tokens then) only in training, and its
late blocks mixed it into the patches: after the demo's 800 steps the patch features of its QA samples kept a
cosine of 0.45-0.52 to their text-free features (captions, with ~9 text tokens: 0.999), and the QA loss barely
depended on the image. Warmed beside the text: a cosine of 0.98-0.998, and "How many shapes are there in total?"
55-92% right in three runs, 5-43% before (benchmarks/demo_image_use.py measures the rest).

The question text that guides the tower (TUNE) reaches it through the LLM's input embeddings and the aux
projector, which are trained here too: freshly initialised, the aux projector maps every question token to nearly
the same vector (cosine 0.997 between tokens of the demo's questions, its biases dominate), so a tower warmed
beside it learns to ignore a constant, and meets real question text only in training.

With TUNE each warm-up image is encoded beside one of its questions alone, and an answer head on the mean patch
learns that question's answer (from the closed answer vocabulary of the records' ``metadata.qa``): the tower learns
to put what the question asks into every patch, where the decoder reads image-wide facts such as the number of
shapes. Measured by benchmarks/demo_learnability.py on the demo's held-out questions after the demo's 1,200
steps: the answer head answers "What colour is the X?" 39% right (17% for the most common colour), "How many shapes
are there in total?" 63% (22%), the background pattern 83% (40%); with the text path left as initialised, 1%, 7%
and 18%: the tower had not learned to read the question at all. In training a turn's question
alone guides the view its answer is read from when the conversation has one question, or with
`card.question_guided_tiles` (each turn's latents); otherwise the full view is guided by the turns joined.

With `answer_through_llm` the same answer is also read through the model's own path to its output: the mean
image token after the projector, through the LLM's final norm and output embeddings, must give the answer's first
token. The decoder then has the answer in its own output space at every image token and only needs to carry it to
the answer's position, an image-wide readout like the shape count, instead of learning to bind a named shape to its
colour, a lookup the from-scratch 4-layer decoder does not learn in the budget (benchmarks/demo_learnability.py).
Measured in an 800-step demo run: short "What colour is the X?" 40.9% vs 10.6-16.7% in two runs without it (15.2%
majority), and the colour / count / spatial captions 44.7 / 37.8 / 50.1% ROUGE-L vs 23.2 / 20.3 / 39.8% (the first
of those runs).

It runs once, before step 0 (a resumed run has the warmed tower in its checkpoint), on samples of the training
sources that have scene graphs; a record without one is counted and skipped.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from generators.procedural.labels import COLOUR_CLASSES, MAX_SHAPE_COUNT, NO_CENTRE, SHAPE_CLASSES, scene_labels
from generators.procedural.vocabulary import BACKGROUND_STYLES, OBJECT_COLORS, SHAPES
from model.fusion import FusionModel
from model.sequence import SequenceBuilder
from pipeline.fileio import atomic_write_text
from pipeline.record import SampleRecord
from train.config import VisionWarmupConfig
from train.loader import image_member, shard_samples
from train.optim import first_and_last_losses, fit_steps
from train.scoring import normalize_answer
from train.sources import Source

logger = logging.getLogger(__name__)

RESULT_FILE = "vision_warmup.json"


class VisionWarmupError(ValueError):
    pass


@dataclass
class WarmupExample:
    image: bytes  # encoded, decoded per batch: thousands of decoded large images would not fit in memory
    colour_shares: torch.Tensor
    shape_shares: torch.Tensor
    centre_shapes: torch.Tensor
    background_style: int
    shape_count: int
    present_pairs: torch.Tensor
    vit_text_ids: list[int]  # the ViT text training gives this sample's full view (empty without TUNE)
    turn_texts: list[list[int]] = field(default_factory=list)  # each turn's question alone, capped as in training
    turn_answers: list[str] = field(default_factory=list)  # each turn's normalized answer, "" for captions
    turn_types: list[str] = field(default_factory=list)  # each turn's question type ("caption", "color_of_shape", ...)


class WarmupHeads(nn.Module):
    def __init__(self, width: int, answers: Sequence[str] = ()) -> None:
        super().__init__()
        self.answers = tuple(answers)  # the answer head's classes (none: no answer head)
        self.answer = nn.Linear(width, len(self.answers)) if self.answers else None
        self.colour = nn.Linear(width, len(COLOUR_CLASSES))
        self.shape = nn.Linear(width, len(SHAPE_CLASSES))
        self.centre = nn.Linear(width, len(SHAPE_CLASSES))
        self.style = nn.Linear(width, len(BACKGROUND_STYLES))
        self.count = nn.Linear(width, MAX_SHAPE_COUNT + 1)
        self.pairs = nn.Linear(width, len(SHAPES) * len(OBJECT_COLORS))


def warmup_examples(model: FusionModel, sources: list[Source], max_images: int) -> tuple[list[WarmupExample], Counter]:
    """Up to ``max_images`` examples from the sources' shards, in shard order; counts of what was skipped."""
    size, patch = model.config.image.image_size, model.vision.patch_size
    counts: Counter = Counter()
    examples: list[WarmupExample] = []
    seen: set[tuple[str, int]] = set()  # two sources may read the same shards (conversations and descriptions)
    for source in (s for s in sources if not s.spec.text_only):  # a text-only source's images are not trained on
        for shard in source.shards:
            keep = None if shard.keep is None else set(shard.keep)
            for position, raw in shard_samples(shard, counts):
                if len(examples) >= max_images:
                    return examples, counts
                if (keep is not None and position not in keep) or (shard.url, position) in seen:
                    continue
                seen.add((shard.url, position))
                example = _example(raw, model.sequence_builder, size, patch, counts)
                if example is not None:
                    examples.append(example)
    return examples, counts


def _example(raw: dict, builder: SequenceBuilder, size: int, patch: int, counts: Counter) -> WarmupExample | None:
    try:
        record = SampleRecord.from_json_dict(json.loads(raw["json"]))
        scenes = record.metadata.get("scenes")
        image_bytes = image_member(raw)
        if not scenes or image_bytes is None:
            counts["without_scene_or_image"] += 1
            return None
        labels = scene_labels(scenes, size, patch)
        Image.open(io.BytesIO(image_bytes)).verify()  # a broken image is skipped here, not mid-training
        tokenized = builder.tokenize(record.conversations, has_image=True)
        vit_text_ids = builder.vit_text_ids(tokenized)
        qa = (record.metadata.get("qa") or [])[: tokenized.num_turns]
        qa += [{}] * (tokenized.num_turns - len(qa))  # turns without a QA entry have no answer to learn
        turn_types = [entry.get("question_type", "") for entry in qa]
        turn_answers = [normalize_answer(entry.get("answer_text", "")) if kind != "caption" else ""
                        for entry, kind in zip(qa, turn_types, strict=True)]
    except (KeyError, ValueError, TypeError, OSError) as error:
        counts["bad_sample"] += 1
        logger.warning("vision warm-up: sample %s skipped: %s", raw.get("__key__", "?"), error)
        return None
    return WarmupExample(image_bytes, torch.from_numpy(labels.colour_shares), torch.from_numpy(labels.shape_shares),
                         torch.from_numpy(labels.centre_shapes), labels.background_style, labels.shape_count,
                         torch.from_numpy(labels.present_pairs), vit_text_ids,
                         [list(ids) for ids in tokenized.vit_text_ids_per_turn], turn_answers, turn_types)


def tower_features(model: FusionModel, examples: list[WarmupExample],
                   vit_texts: Sequence[list[int]] | None = None) -> torch.Tensor:
    """(N, P, C) connector input of the examples' full views; with TUNE, guided by `vit_texts` (default: the ViT
    text training gives each one)."""
    processor = model.sequence_builder.image_processor
    pixels = torch.stack([processor(Image.open(io.BytesIO(e.image)))[-1] for e in examples])
    return patch_features(model, pixels, [e.vit_text_ids for e in examples] if vit_texts is None else vit_texts)


def patch_features(model: FusionModel, views: torch.Tensor, vit_texts: Sequence[list[int]]) -> torch.Tensor:
    """(N, P, C) connector input of N views, beside their ViT text ids with TUNE (empty ids: no text)."""
    device = _device(model)
    views = views.to(device)
    if not model.config.use_tune:
        return model.vision(views).features
    ids, mask = model.sequence_builder.pad_vit_texts(vit_texts)
    _, guide = model.vit_text_guide(ids.to(device))
    encoding = model.vision(views, guide, mask.to(device))
    return encoding.features[:, : encoding.patch_embeddings.shape[1]]


def answers_of(examples: Sequence[WarmupExample]) -> list[str]:
    """The answer head's classes: every answer of the examples' question turns, sorted."""
    return sorted({answer for e in examples for answer in e.turn_answers if answer})


def answer_turns(rng: random.Random, examples: Sequence[WarmupExample]) -> list[int]:
    """One turn per example, drawn among its question turns (its caption turn when it has no question)."""
    turns = []
    for e in examples:
        asked = [t for t, answer in enumerate(e.turn_answers) if answer]
        turns.append(rng.choice(asked) if asked else 0)
    return turns


def warmup_losses(model: FusionModel, heads: WarmupHeads, examples: list[WarmupExample],
                  turns: Sequence[int] | None = None, answer_tokens: torch.Tensor | None = None
                  ) -> dict[str, torch.Tensor]:
    """Soft cross-entropy on the patch shares, cross-entropy on centred shapes, the style and the count, binary
    cross-entropy on the pairs present; with an answer head and `turns`, each image is encoded beside that turn's
    question alone and the answer head's cross-entropy on its mean patch is added (with `answer_tokens`, the first
    token of each of the head's answers on the model's device: and the cross-entropy of that token read from the
    mean image token through the LLM's output path)."""
    if heads.answer is None or turns is None:  # the full view beside the ViT text training gives it
        features = tower_features(model, examples)
        return dense_losses(heads, features, examples)
    texts = [e.turn_texts[t] for e, t in zip(examples, turns, strict=True)]
    features = tower_features(model, examples, texts)
    losses = dense_losses(heads, features, examples)
    targets = torch.tensor([heads.answers.index(e.turn_answers[t]) if e.turn_answers[t] in heads.answers else -100
                            for e, t in zip(examples, turns, strict=True)], device=features.device)
    logits = heads.answer(features.mean(dim=1))
    losses["answer"] = _cross_entropy(logits, targets)
    if answer_tokens is not None:
        first_tokens = torch.where(targets >= 0, answer_tokens[targets.clamp(min=0)], -100)
        losses["answer_llm"] = _cross_entropy(logits_through_llm(model, features), first_tokens)
    return losses


def logits_through_llm(model: FusionModel, features: torch.Tensor) -> torch.Tensor:
    """(N, vocab) logits of the mean image token of (N, P, C) tower features after the projector, read through the
    LLM's final norm and output embeddings."""
    mean_token = model.mm_projector(features.to(model.mm_projector[0].weight.dtype)).mean(dim=1)
    return model.language_model.get_output_embeddings()(final_norm(model)(mean_token))


def answer_first_tokens(model: FusionModel, answers: Sequence[str]) -> torch.Tensor:
    """The first token of each answer, as the decoder writes it at the start of its turn."""
    tokenizer = model.sequence_builder.tokenizer
    return torch.tensor([tokenizer.encode(answer, add_special_tokens=False)[0] for answer in answers])


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not `ignore_index` (zero, still in the graph, when none is)."""
    return (nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index)
            if (targets != ignore_index).any() else logits.sum() * 0.0)


def final_norm(model: FusionModel) -> nn.Module:
    """The LLM's norm before its output embeddings (`model.norm` in the Llama, Qwen2 and Phi-3 families)."""
    norm = getattr(getattr(model.language_model, "model", None), "norm", None)
    if not isinstance(norm, nn.Module):
        raise VisionWarmupError(f"vision_warmup.answer_through_llm: {type(model.language_model).__name__} has no "
                                f"final norm at .model.norm; set vision_warmup.answer_through_llm: false")
    return norm


def dense_losses(heads: WarmupHeads, features: torch.Tensor, examples: list[WarmupExample]) -> dict[str, torch.Tensor]:
    """The scene-graph losses of (N, P, C) full-view features."""
    device = features.device

    def soft_ce(logits: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
        return -(shares.to(device) * logits.log_softmax(-1)).sum(-1).mean()

    pooled = features.mean(dim=1)
    centres = torch.stack([e.centre_shapes for e in examples]).to(device).flatten()
    # scenes without objects have no centre: a batch of only those has no centre term (not a NaN mean)
    centre = _cross_entropy(heads.centre(features).flatten(0, 1), centres, ignore_index=NO_CENTRE)
    return {
        "colour": soft_ce(heads.colour(features), torch.stack([e.colour_shares for e in examples])),
        "shape": soft_ce(heads.shape(features), torch.stack([e.shape_shares for e in examples])),
        "centre": centre,
        "style": nn.functional.cross_entropy(
            heads.style(pooled), torch.tensor([e.background_style for e in examples], device=device)),
        "count": nn.functional.cross_entropy(
            heads.count(pooled), torch.tensor([e.shape_count for e in examples], device=device)),
        # summed over the pairs (a mean over 64 mostly absent pairs would weigh it far below the other terms)
        "pairs": nn.functional.binary_cross_entropy_with_logits(
            heads.pairs(pooled), torch.stack([e.present_pairs for e in examples]).to(device),
            reduction="none").sum(-1).mean(),
    }


def warm_up_vision(model: FusionModel, sources: list[Source], config: VisionWarmupConfig, seed: int,
                   out: Path | None = None, progress: bool = True,
                   examples_read: tuple[list[WarmupExample], Counter] | None = None) -> dict:
    """Train ``model.vision`` on dense scene targets for ``config.steps`` steps; returns (and saves) the losses.
    `examples_read`: `warmup_examples(model, sources, config.max_images)` when the caller has read them already."""
    if not any(p.requires_grad for p in model.vision.parameters()):
        raise VisionWarmupError("vision_warmup.steps > 0 but the vision tower is frozen (model.trainable)")
    examples, counts = examples_read or warmup_examples(model, sources, config.max_images)
    if not examples:
        raise VisionWarmupError(
            f"vision_warmup: none of the training sources ({', '.join(s.name for s in sources)}) has a sample "
            f"with a scene graph (metadata.scenes, written by the procedural generator) and an image "
            f"({dict(counts) or 'no sample read'}); set vision_warmup.steps: 0 for other data")
    if counts:
        logger.info("vision warm-up: %d examples, skipped %s", len(examples), dict(counts))
    _, history = fit_warmup_heads(model, examples, config, seed, progress)
    first, last = first_and_last_losses(history)
    result = {"steps": config.steps, "examples": len(examples), "skipped": dict(counts), "first_losses": first,
              "last_losses": last}
    logger.info("vision warm-up: %d steps on %d examples, losses %s -> %s", config.steps, len(examples), first, last)
    if out is not None:
        atomic_write_text(out / RESULT_FILE, json.dumps(result, indent=2))
    return result


def fit_warmup_heads(model: FusionModel, examples: list[WarmupExample], config: VisionWarmupConfig, seed: int,
                     progress: bool = True, train_text_path: bool = True) -> tuple[WarmupHeads, list[dict[str, float]]]:
    """The warm-up loop: the tower, the question's way into it (TUNE) and fresh heads trained together; returns the
    heads and the per-step losses. `train_text_path=False` leaves the embeddings and the aux projector as they are
    (the earlier warm-up, for comparison)."""
    answers = answers_of(examples) if model.config.use_tune else []
    with torch.random.fork_rng(devices=[]):  # seeded heads; the training's random stream is left as it was
        torch.manual_seed(seed)
        heads = WarmupHeads(model.vision.output_size, answers).to(_device(model))
    text_path = warmed_modules(model)[1:]
    frozen = [] if train_text_path else [p for module in text_path for p in module.parameters() if p.requires_grad]
    for p in frozen:  # left alone, and no gradient piles up on it
        p.requires_grad_(False)
    modules = warmed_modules(model, through_llm=config.answer_through_llm and bool(answers))
    # by identity: tied input and output embeddings are one parameter
    parameters = list({id(p): p for module in modules for p in module.parameters() if p.requires_grad}.values())
    parameters += list(heads.parameters())
    was_training = model.vision.training
    model.vision.train()
    try:
        history = _fit(model, heads, examples, config, parameters, seed, progress)
    finally:
        model.vision.train(was_training)
        for p in frozen:
            p.requires_grad_(True)
    return heads, history


def _fit(model: FusionModel, heads: WarmupHeads, examples: list[WarmupExample], config: VisionWarmupConfig,
         parameters: list[nn.Parameter], seed: int, progress: bool) -> list[dict[str, float]]:
    """The optimisation steps of `fit_warmup_heads` (a cosine schedule, the main training's shape); returns the
    per-step losses."""
    order = random.Random(seed)
    answers = heads.answer is not None
    # tokenized once here, not per step
    answer_tokens = (answer_first_tokens(model, heads.answers).to(_device(model))
                     if answers and config.answer_through_llm else None)

    def step_losses() -> dict[str, torch.Tensor]:
        batch = [examples[order.randrange(len(examples))] for _ in range(config.batch_size)]
        return warmup_losses(model, heads, batch, answer_turns(order, batch) if answers else None, answer_tokens)

    return fit_steps(parameters, step_losses, steps=config.steps, lr=config.lr, warmup_ratio=config.warmup_ratio,
                     schedule="cosine", desc="vision warm-up", progress=progress)


@torch.no_grad()
def centre_accuracy(model: FusionModel, heads: WarmupHeads, examples: list[WarmupExample],
                    batch_size: int = 64) -> dict[str, float]:
    """At the patches where an object is centred: how often the centre head names its shape, and how often the
    colour head's top class is the patch's most common colour (what a question about that object needs)."""
    shape_hits = colour_hits = total = 0
    was_training = model.vision.training
    model.vision.eval()
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        features = tower_features(model, chunk)
        centres = torch.stack([e.centre_shapes for e in chunk]).to(features.device)
        centred = centres != NO_CENTRE
        shape_hits += int((heads.centre(features).argmax(-1) == centres)[centred].sum())
        true_colours = torch.stack([e.colour_shares for e in chunk]).to(features.device).argmax(-1)
        colour_hits += int((heads.colour(features).argmax(-1) == true_colours)[centred].sum())
        total += int(centred.sum())
    model.vision.train(was_training)
    return {"centred_patches": total, "shape": shape_hits / max(total, 1), "colour": colour_hits / max(total, 1)}


@torch.no_grad()
def answer_accuracy(model: FusionModel, heads: WarmupHeads, examples: list[WarmupExample],
                    batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Per question type: how often the answer head, reading the mean patch of each image encoded beside one
    question, gives that question's answer, beside always giving the type's most common answer."""
    if heads.answer is None:
        raise ValueError("these warm-up heads have no answer head (a tower without TUNE reads no question)")
    items = [(e, t) for e in examples for t, answer in enumerate(e.turn_answers) if answer]
    hits: dict[str, list[bool]] = {}
    answers: dict[str, Counter] = {}
    was_training = model.vision.training
    model.vision.eval()
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        features = tower_features(model, [e for e, _ in chunk], [e.turn_texts[t] for e, t in chunk])
        predicted = heads.answer(features.mean(dim=1)).argmax(-1).tolist()
        for (e, t), index in zip(chunk, predicted, strict=True):
            hits.setdefault(e.turn_types[t], []).append(heads.answers[index] == e.turn_answers[t])
            answers.setdefault(e.turn_types[t], Counter())[e.turn_answers[t]] += 1
    model.vision.train(was_training)
    return {kind: {"questions": len(hit), "accuracy": sum(hit) / len(hit),
                   "most_common": answers[kind].most_common(1)[0][1] / len(hit)} for kind, hit in sorted(hits.items())}


def warmed_modules(model: FusionModel, through_llm: bool = False) -> list[nn.Module]:
    """What the warm-up trains: the tower and, with TUNE, the question's way into it (the LLM's input embeddings
    and the aux projector); with `through_llm` also the way out to the answer (the projector, the LLM's final norm
    and output embeddings)."""
    if not model.config.use_tune:
        return [model.vision]
    modules = [model.vision, model.language_model.get_input_embeddings(), model.aux_projector]
    if through_llm:
        modules += [model.mm_projector, final_norm(model), model.language_model.get_output_embeddings()]
    return modules


def _device(model: FusionModel) -> torch.device:
    return next(model.vision.parameters()).device
