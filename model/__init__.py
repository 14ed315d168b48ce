"""FUSION multimodal LLM: text-guided vision encoding (TUNE), context-aware recursive alignment decoding (CARD),
dual semantic mapping loss (DSM), on top of stock Hugging Face causal LMs and SigLIP towers."""

from model.batch import FusionBatch
from model.config import PRESETS, ConfigError, FusionConfig, get_preset
from model.fusion import FusionModel, FusionOutput
from model.sequence import SequenceBuilder, SequenceTooLongError

__all__ = [
    "PRESETS",
    "ConfigError",
    "FusionBatch",
    "FusionConfig",
    "FusionModel",
    "FusionOutput",
    "SequenceBuilder",
    "SequenceTooLongError",
    "get_preset",
]
