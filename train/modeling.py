"""The FUSION model a training run starts from: a preset with sources and overrides, or a checkpoint.

Weights are float32 masters whatever the preset stores (the paper presets say bfloat16): mixed precision is the
strategy's autocast / FSDP policy, so the optimizer state is never bf16.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from model.config import FusionConfig, get_preset
from model.fusion import FusionModel
from train.config import ModelSection, TrainConfigError
from train.distributed import DistInfo, barrier
from train.sources import Source
from train.tokenizer import train_tokenizer

logger = logging.getLogger(__name__)

MASTER_DTYPE = "float32"
TOKENIZER_DIR = "tokenizer"


def fusion_config(section: ModelSection) -> FusionConfig:
    try:
        config = get_preset(section.preset)
    except KeyError as error:
        raise TrainConfigError(f"model.preset: {error.args[0]}") from None
    config = config.with_sources(language_model=section.language_model, vision_tower=section.vision_tower,
                                 tokenizer=section.tokenizer)
    if section.overrides:
        data = config.to_dict()
        for dotted, value in _flatten(section.overrides).items():
            _set_dotted(data, dotted, copy.deepcopy(value), f"model.overrides.{dotted}")
        try:
            config = FusionConfig.from_dict(data)
        except (ValueError, TypeError) as error:
            raise TrainConfigError(f"model.overrides: {error}") from None
    return as_master_weights(config)


def as_master_weights(config: FusionConfig) -> FusionConfig:
    config = copy.deepcopy(config)
    for part, name in ((config.language_model, "language_model"), (config.vision_tower, "vision_tower")):
        if part.dtype != MASTER_DTYPE:
            logger.info("%s stored as %s in the preset: trained with %s master weights", name, part.dtype,
                        MASTER_DTYPE)
            part.dtype = MASTER_DTYPE
    return config


def _flatten(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings (as `--set model.overrides.a.b=1` makes them) merge field by field, like dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, field: str) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            if part in node and node[part] is not None:
                raise TrainConfigError(f"{field}: {part!r} is not a mapping")
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def build_model(section: ModelSection, *, seed: int, sources: list[Source], out: Path, info: DistInfo
                ) -> FusionModel:
    """Every rank builds the same model (seeded), on its device, in training mode."""
    if section.init_from is not None:
        model = FusionModel.from_pretrained(section.init_from, dtype=MASTER_DTYPE, device=info.device).train()
        logger.info("starting from checkpoint %s", section.init_from)
    else:
        config = fusion_config(section)
        tokenizer = None
        if section.train_tokenizer is not None:
            tokenizer = _data_tokenizer(section, sources, out / TOKENIZER_DIR, info)
            architecture = dict(config.language_model.architecture or {})
            architecture["vocab_size"] = len(tokenizer)
            config.language_model.architecture = architecture
        torch.manual_seed(seed)  # identical initial weights on every rank (FSDP shards each rank's own copy)
        model = FusionModel.from_config(config, with_tokenizer=tokenizer is None)
        if tokenizer is not None:
            model.attach_tokenizer(tokenizer)
        model.to(info.device)
    if model.tokenizer is None:
        raise TrainConfigError("model: no tokenizer (set model.tokenizer, or model.train_tokenizer for a preset "
                               "built from scratch)")
    if section.trainable:
        model.set_trainable(section.trainable)
    model._log_components("training")
    return model


def _data_tokenizer(section: ModelSection, sources: list[Source], directory: Path, info: DistInfo):
    """Trained once by rank 0 on the data (and kept in the run folder, so a resumed run reuses it)."""
    if info.is_main and not (directory / "tokenizer.json").is_file():
        spec = section.train_tokenizer
        train_tokenizer(sources, directory, spec.vocab_size, spec.max_samples)
    barrier()
    return AutoTokenizer.from_pretrained(directory)
