"""Typed training configuration, loaded from YAML presets `configs/train-<name>.yaml` with `--set a.b=value`.

A preset may name another as `base:` (deep-merged underneath), like the synthesis configs. Validation errors name
the file and the dotted field at fault. The resolved config is saved beside every run (`train_config.yaml`).
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.config_files import apply_override, deep_merge, read_with_bases, validate_model
from train.choices import AnswerForm

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESET_DIR = REPO_ROOT / "configs"
PRESET_PREFIX = "train-"

SAMPLING_PATTERN = re.compile(r"^(all|(first|end|random):\d+(\.\d+)?%?|\d+(\.\d+)?%)$")


class TrainConfigError(ValueError):
    """A training config that cannot be used; the message names the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenizerTraining(Strict):
    """Train a byte-level BPE tokenizer on the training text (for presets built from scratch, no weights)."""

    vocab_size: int = Field(1024, ge=300)
    max_samples: int = Field(20000, ge=1, description="Samples whose conversations the tokenizer is trained on")


class ModelSection(Strict):
    preset: str = Field(description="FUSION model preset (model.config.PRESETS), e.g. fusion-3b or fusion-cpu-small")
    language_model: str | None = Field(None, description="LLM directory or Hub id (overrides the preset's source)")
    vision_tower: str | None = Field(None, description="Vision tower directory or Hub id")
    tokenizer: str | None = Field(None, description="Tokenizer directory or Hub id")
    train_tokenizer: TokenizerTraining | None = None
    init_from: str | None = Field(None, description="A FUSION checkpoint to start from (e.g. stage 1 for stage 1.5)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="FusionConfig fields by dotted name")
    trainable: dict[str, bool] = Field(default_factory=dict, description="Component -> trained (default: all)")


class SourceSpec(Strict):
    """One source of a mixture: shards from a dataset folder, a glob, or fsspec URLs."""

    name: str | None = None
    path: str | None = Field(None, description="Dataset folder (with manifest.json), tar glob, or fsspec URL/glob "
                             "(None: the dataset given by --data)")
    split: str | None = Field("train", description="Split to read from a dataset folder (None: every split)")
    categories: list[str] | None = Field(None, description="Categories of a dataset folder (None: all)")
    weight: float = Field(1.0, gt=0, description="Mixture weight (samples are drawn in proportion)")
    sampling: str = Field("all", description="all | first:N | end:N | random:N | N% (random) | first:N% ... (the paper's sampling_strategy)")
    text_only: bool = Field(False, description="Train on the conversations only, ignoring any image")
    context: Literal["description", "caption"] | None = Field(
        None, description="With text_only: the record's text field put before the first question, so the "
        "answers are read off the text the QA was written from")
    describe: Literal["description", "caption"] | None = Field(
        None, description="Train on the record's text field as the answer to a request to describe the image "
        "(in detail for the description) instead of on its conversations: image-text alignment data like the "
        "paper's stage 1, every word of it supervised")
    min_scores: dict[str, float] = Field(default_factory=dict, description="score name -> minimum (load time)")
    max_scores: dict[str, float] = Field(default_factory=dict, description="score name -> maximum (load time)")

    @field_validator("sampling")
    @classmethod
    def _known_sampling(cls, value: str) -> str:
        if not SAMPLING_PATTERN.match(value):
            raise ValueError(f"sampling {value!r} must be all, first:N, end:N, random:N or N% (first:N% too)")
        if value.endswith("%") and not 0 < float(value.split(":")[-1][:-1]) <= 100:
            raise ValueError(f"sampling {value!r}: the percentage must be in (0, 100]")
        return value

    @model_validator(mode="after")
    def _text_fields_fit_the_image_use(self) -> SourceSpec:
        if self.context is not None and not self.text_only:
            raise ValueError(f"context: {self.context!r} needs text_only: true (the text stands in for the image)")
        if self.describe is not None and self.text_only:
            raise ValueError(f"describe: {self.describe!r} needs the image (text_only: false)")
        return self

    @property
    def label(self) -> str:
        return self.name or self.path or "--data"


class DataSection(Strict):
    sources: list[SourceSpec] = Field(default_factory=list)
    shuffle_buffer: int = Field(1000, ge=1, description="Samples held by the shuffle buffer of each worker")
    shuffle_initial: int = Field(100, ge=1, description="Samples buffered before the first one is yielded")
    resampled: bool = Field(False, description="Draw shards with replacement instead of seeded epoch shuffles")
    split: Literal["shards", "samples"] = Field(
        "shards", description="How ranks and workers share the data: 'shards' (each reads its own shards, when there "
        "are at least as many as readers) or 'samples' (each reads every shard and keeps every n-th sample: the same "
        "mixture on every rank when a dataset has one shard per family)")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes per rank")
    prefetch_factor: int = Field(4, ge=1)
    length_group: int = Field(1, ge=1, description="Micro-batches whose samples are sorted by length together, so "
                              "a batch pads less (1: batches in stream order); a sorted micro-batch holds one length "
                              "band, so use it with several micro-batches per optimizer step")
    min_scores: dict[str, float] = Field(default_factory=dict, description="Applied to every source")
    max_scores: dict[str, float] = Field(default_factory=dict, description="Applied to every source")
    max_bad_fraction: float = Field(0.5, ge=0, le=1, description="Stop when more samples than this are bad")
    multiple_choice_answer: AnswerForm = Field(
        "letter", description="How the model is trained to answer a lettered question: 'letter' as the data does "
        "('B'), or 'option_and_letter', the option's text then its letter ('red: B'; train/choices.py); evaluation "
        "writes the earlier turns of its prompts the same way")


class OptimSection(Strict):
    lr: float = Field(2e-5, gt=0, description="LLM, projectors and interaction layers")
    vision_lr: float | None = Field(None, gt=0, description="Vision tower (None: lr)")
    component_lr: dict[str, float] = Field(default_factory=dict, description="Component -> lr override")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine floor as a fraction of the peak lr")
    max_grad_norm: float | None = Field(1.0, gt=0)


class BatchSection(Strict):
    global_batch: int = Field(256, ge=1, description="Samples per optimizer step over all ranks")
    micro_batch: int = Field(8, ge=1, description="Samples per forward pass on one rank")

    def accumulation(self, world_size: int) -> int:
        per_step = self.micro_batch * world_size
        if self.global_batch % per_step:
            raise TrainConfigError(
                f"batch.global_batch={self.global_batch} is not a multiple of batch.micro_batch={self.micro_batch} "
                f"x {world_size} ranks"
            )
        return self.global_batch // per_step


class CheckpointSection(Strict):
    every_steps: int | None = Field(1000, ge=1, description="Save every N steps (None: only at the end)")
    keep: int = Field(3, ge=1, description="Checkpoints kept (older ones are deleted)")


class LogSection(Strict):
    every_steps: int = Field(10, ge=1)
    tensorboard: bool = True
    progress: bool = True


class EvalSection(Strict):
    split: str = "test"
    batch_size: int = Field(32, ge=1)
    max_samples_per_category: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(48, ge=1, description="For long answers and captions")
    max_new_tokens_short: int = Field(8, ge=1, description="For short answers, yes/no and option letters")
    processes: int = Field(
        1, ge=1, description="Local processes answering batches at once, one torch thread each (train/eval_workers.py): "
        "on 2 CPU cores 2 processes answer ~1.4x as many questions per second as one process with 2 threads")
    cloze_multiple_choice: bool = Field(
        True, description="Also score multiple choice as cloze: each option's text by its likelihood as the answer "
        "to the question without options (train/evaluate.py); reported beside the letter score")


class VisionWarmupConfig(Strict):
    """Dense scene-graph targets for a vision tower built from scratch (train/vision_warmup.py); 0 steps: off."""

    steps: int = Field(0, ge=0, description="Warm-up steps before step 0 (procedural data with scene graphs)")
    lr: float = Field(2e-3, gt=0)
    warmup_ratio: float = Field(0.02, ge=0, lt=1)
    batch_size: int = Field(32, ge=1)
    max_images: int = Field(6000, ge=1, description="Images read from the training sources, in shard order")
    answer_through_llm: bool = Field(
        False, description="With TUNE: the answer is also read from the mean image token through the projector and "
        "the LLM's final norm and output embeddings (the answer's first token), so the tower's answer lands where "
        "the decoder writes its own; trains the projector, the final norm and the output embeddings too")
    realign_steps: int = Field(
        0, ge=0, description="With answer_through_llm and a binding warm-up: steps after the binding warm-up that "
        "train the projector alone to read the image's answers through the output path again (the binding warm-up "
        "retrained that path on option text; the decoder and its option lookup are left as they are)")


class BindingWarmupConfig(Strict):
    """Multiple choice with its answer given (told, or as the option's text before the letter) for a decoder built
    from scratch (train/binding_warmup.py); 0 steps: off."""

    steps: int = Field(0, ge=0, description="Warm-up steps before step 0 (text-only, the language model alone)")
    lr: float = Field(3e-4, gt=0, description="Constant after the ramp (benchmarks/option_lookup_lr.py: the lookup "
                      "forms at 3e-4, less at 2e-3)")
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    batch_size: int = Field(64, ge=1)
    max_questions: int = Field(20000, ge=1, description="Distinct multiple-choice turns read, in shard order")
    told_share: float = Field(
        0.0, ge=0, le=1, description="With data.multiple_choice_answer: option_and_letter, the share of conversations "
        "told their answer before the question ('The answer is red.'); the others must guess the option's text, which "
        "text alone cannot tell (the letter-only form is always told)")


class TrainConfig(Strict):
    name: str
    seed: int = 0
    stage: str | None = Field(None, description="Paper stage this preset follows (1, 1.5, 2), for the record")
    model: ModelSection
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    batch: BatchSection = Field(default_factory=BatchSection)
    epochs: float | None = Field(1.0, gt=0, description="Training length in epochs of the mixture (sizes.json)")
    max_steps: int | None = Field(None, ge=1, description="Training length in optimizer steps (wins over epochs)")
    max_length: int | None = Field(None, ge=16, description="Sequence cap (None: the model's sequence.max_length)")
    precision: Literal["auto", "float32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA with fp32 master weights, float32 on CPU")
    gradient_checkpointing: bool = False
    deterministic: bool = Field(False, description="torch deterministic algorithms: bitwise-repeatable runs "
                                "(CPU attention backward otherwise sums in thread order)")
    loss_chunk_tokens: int = Field(4096, ge=1, description="Supervised tokens per cross-entropy chunk")
    strategy: Literal["auto", "single", "ddp", "fsdp"] = "auto"
    local_ranks: int = Field(
        1, ge=1, description="Data-parallel ranks a training command starts on this machine itself when torchrun or "
        "Ray Train did not start it (train/local_ranks.py): 2 on a 2-core CPU did 1.2-1.4x the steps per second of "
        "one process with 2 threads (benchmarks/local_ranks.py); the warm-ups run once before the ranks start")
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    log: LogSection = Field(default_factory=LogSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    vision_warmup: VisionWarmupConfig = Field(default_factory=VisionWarmupConfig)
    binding_warmup: BindingWarmupConfig = Field(default_factory=BindingWarmupConfig)

    @model_validator(mode="after")
    def _has_length(self) -> TrainConfig:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set epochs or max_steps")
        return self

    @model_validator(mode="after")
    def _realign_has_what_it_realigns(self) -> TrainConfig:
        warmup = self.vision_warmup
        if warmup.realign_steps and not (warmup.steps and warmup.answer_through_llm and self.binding_warmup.steps):
            raise ValueError("vision_warmup.realign_steps needs vision_warmup.steps > 0 with answer_through_llm: "
                             "true and binding_warmup.steps > 0 (it realigns what the binding warm-up moved)")
        return self

    def total_steps(self, steps_per_epoch: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * steps_per_epoch))


def resolve_preset(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (PRESET_DIR / f"{PRESET_PREFIX}{name_or_path}.yaml", PRESET_DIR / f"{name_or_path}.yaml"):
        if candidate.is_file() and candidate.stem.startswith(PRESET_PREFIX):
            return candidate
    known = ", ".join(sorted(p.stem.removeprefix(PRESET_PREFIX) for p in PRESET_DIR.glob(f"{PRESET_PREFIX}*.yaml")))
    raise TrainConfigError(f"training config {str(name_or_path)!r} is neither a file nor a preset (presets: {known})")


def preset_names() -> list[str]:
    return sorted(p.stem.removeprefix(PRESET_PREFIX) for p in PRESET_DIR.glob(f"{PRESET_PREFIX}*.yaml"))


def load_train_config(name_or_path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    path = resolve_preset(name_or_path)
    raw = read_with_bases(path, _resolve_base, TrainConfigError)
    for override in overrides or []:
        apply_override(raw, override, TrainConfigError)
    return validate_train_config(raw, source=str(path))


def train_config_from_section(section: dict[str, Any], source: str, overrides: list[str] | None = None
                              ) -> TrainConfig:
    """The `train:` section of a run config: a mapping that may name a preset as `base:`."""
    raw = copy.deepcopy(section)
    base = raw.pop("base", None)
    if base is not None:
        raw = deep_merge(read_with_bases(resolve_preset(base), _resolve_base, TrainConfigError), raw)
    for override in overrides or []:
        apply_override(raw, override, TrainConfigError)
    return validate_train_config(raw, source=f"{source} (train section)")


def validate_train_config(raw: dict[str, Any], source: str) -> TrainConfig:
    return validate_model(TrainConfig, raw, source, "training config", TrainConfigError)


def save_train_config(config: TrainConfig, path: Path) -> None:
    from pipeline.fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def _resolve_base(_: Path, base: str) -> Path:
    return resolve_preset(base)
