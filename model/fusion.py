"""FusionModel: stock causal LM + text-guided SigLIP tower + projectors + CARD interaction layers + DSM loss.

forward(batch) -> loss and its parts; generate(images, conversations) -> answers (batched, left padding, KV cache);
save_pretrained / from_pretrained (config.json + model.safetensors + tokenizer/).

Every module call of a forward happens inside `FusionModel.forward` (embeddings, projectors, the LM head), so the
model can be the root of FSDP2 with per-block units. With `uniform_execution` (set by the trainer under DDP and
FSDP) a forward runs the same modules in the same order whatever the batch holds: a batch without images still runs
the vision tower, the projectors and every interaction layer on placeholders with zero weight, so DDP needs no
`find_unused_parameters` and FSDP ranks issue the same collectives.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import AutoTokenizer, DynamicCache, PreTrainedModel, PreTrainedTokenizerBase, SiglipVisionModel
from transformers.initialization import no_init_weights
from transformers.modeling_layers import GradientCheckpointingLayer

from model.backbones import (
    VisionTower,
    WeightsMode,
    architecture_dict,
    decoder_layers,
    load_language_model,
    load_tokenizer,
    load_vision_tower,
    torch_dtype,
)
from model.batch import FusionBatch
from model.card import CardContext, CardInteraction, initial_latents, latent_windows, stitch_tiles
from model.config import ConfigError, FusionConfig
from model.connector import MlpProjector
from model.dsm import DsmTerms, Reconstruction, dual_semantic_mapping_loss
from model.loss import IGNORE_INDEX, chunked_cross_entropy_sum, cross_entropy_sum
from model.sequence import Conversation, SequenceBuilder, add_vision_tokens
from model.vision import TextGuidedVisionEncoder

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


@dataclass
class FusionOutput:
    logits: torch.Tensor | None  # (B, L, V); None when the loss was computed in chunks from hidden states
    loss: torch.Tensor | None  # lm_loss + dsm_weight * (dsm_text + dsm_image)
    lm_loss: torch.Tensor | None
    # DSM terms (None when DSM is not computed): text over the question tokens of all samples, image over the
    # patches of image samples (zero in a batch without images); see model.dsm.
    dsm_text: torch.Tensor | None
    dsm_image: torch.Tensor | None
    lm_loss_sum: torch.Tensor | None = None  # sum of the token losses (lm_loss = lm_loss_sum / num_supervised)
    num_supervised: torch.Tensor | None = None  # supervised tokens of the batch


@dataclass
class _ImageFeatures:
    image_tokens: torch.Tensor  # (NI, G*G, D) tokens placed in the LLM sequence
    tile_map: torch.Tensor | None  # (NI or NB, g*s, g*s, D) stitched tile map in LLM space (CARD only)
    rebuilt_question: Reconstruction | None  # DSM text term of the image samples (when DSM is computed)
    rebuilt_patches: Reconstruction | None  # DSM image term (when DSM is computed)
    tile_map_per_block: bool = False  # the tile map has one row per latent block (question-guided), not per image


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean next-token cross entropy over supervised labels; a batch with none supervised is an error."""
    total, count = cross_entropy_sum(logits, labels)
    return total / count


def interpolate_image_tokens(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """FUSION-L: bilinear resize of (N, s*s, D) image tokens to (N, grid*grid, D)."""
    count, num_tokens, width = tokens.shape
    side = int(num_tokens**0.5)
    spatial = tokens.reshape(count, side, side, width).permute(0, 3, 1, 2)
    resized = F.interpolate(spatial.float(), size=(grid, grid), mode="bilinear", align_corners=False)
    return resized.to(tokens.dtype).permute(0, 2, 3, 1).reshape(count, grid * grid, width)


class FusionModel(nn.Module):
    def __init__(
        self,
        config: FusionConfig,
        language_model: PreTrainedModel,
        vision_tower: VisionTower,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.language_model = language_model
        self.vision = TextGuidedVisionEncoder(vision_tower, config.tune.early_layers, config.use_multi_level_connector)
        hidden_size = language_model.config.get_text_config().hidden_size
        dtype = language_model.get_input_embeddings().weight.dtype
        self.mm_projector = MlpProjector(self.vision.output_size, hidden_size).to(dtype)
        # The aux projector exists only with TUNE: it feeds questions into the ViT and rebuilds patches for DSM.
        self.aux_projector = MlpProjector(hidden_size, self.vision.hidden_size).to(dtype) if config.use_tune else None
        self.card: CardInteraction | None = None
        if config.use_card:
            layers = decoder_layers(language_model)
            self.card = CardInteraction(hidden_size, config.card, len(layers)).to(dtype)
            self.card.attach(layers)
        self.native_image_grid = self._check_image_geometry(vision_tower)
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self._sequence_builder: SequenceBuilder | None = None
        # Same modules on every forward (placeholders with zero weight); the trainer turns it on under DDP and FSDP.
        self.uniform_execution = False
        if tokenizer is not None:
            self.attach_tokenizer(tokenizer)
        self.train()  # backbones loaded by from_pretrained come in eval mode; start uniform, like any nn.Module

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls, config: FusionConfig, weights: WeightsMode = "pretrained", with_tokenizer: bool = True
    ) -> FusionModel:
        """Build from a config: backbones from their sources ("pretrained"), random, or on the meta device."""
        language_model = load_language_model(config.language_model, weights)
        vision_tower = load_vision_tower(config.vision_tower, weights)
        lm = config.language_model
        has_tokenizer_source = any(v is not None for v in (lm.tokenizer_source, lm.source, lm.python_package))
        tokenizer = load_tokenizer(lm) if with_tokenizer and weights != "meta" and has_tokenizer_source else None
        with torch.device("meta") if weights == "meta" else contextlib.nullcontext():
            model = cls(config, language_model, vision_tower, tokenizer)
        model._log_components(f"FUSION {config.name!r}")
        return model

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> FusionModel:
        """Load a directory written by `save_pretrained` (or a training checkpoint), in eval mode.

        The modules are allocated on `device` in `dtype` (default: the saved dtypes, on CPU) without any random
        initialisation, then filled from the safetensors file(s): one `model.safetensors`, or the
        `model-XXXXX-of-YYYYY.safetensors` shards written by torch distributed checkpoint.
        """
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"FUSION checkpoint {str(directory)!r} has no {CONFIG_FILE}")
        config = FusionConfig.from_json(config_path)
        if dtype is not None:
            name = str(dtype).removeprefix("torch.")
            torch_dtype(name)  # fails early on a name that is not a dtype
            config.language_model.dtype = config.vision_tower.dtype = name
        tokenizer_dir = directory / TOKENIZER_DIR
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir.is_dir() else None
        device = torch.device(device or "cpu")
        with device, no_init_weights():
            model = cls(
                config,
                load_language_model(config.language_model, "empty"),
                load_vision_tower(config.vision_tower, "empty"),
                tokenizer,
            )
        model.load_weights(weight_files(directory), device)
        logger.info("FUSION model %r loaded from %s", config.name, directory)
        return model.eval()  # like Hugging Face from_pretrained: call .train() to fine-tune

    def load_weights(self, files: Sequence[Path], device: torch.device) -> None:
        """Fill every parameter and persistent buffer from safetensors files (shared tensors such as tied
        embeddings are stored once); anything missing or unexpected is an error."""
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(safetensors.torch.load_file(file, device=str(device)))
        own = self.state_dict()
        for name, tensor in state.items():
            if name in own and own[name].dtype != tensor.dtype:
                state[name] = tensor.to(own[name].dtype)
        missing, unexpected = self.load_state_dict(state, strict=False)
        shared = _shared_names(self)
        missing = [name for name in missing if not (shared.get(name, set()) & state.keys())]
        if missing or unexpected:
            raise RuntimeError(
                f"FUSION weights in {[str(f) for f in files]} do not match the config: missing {missing[:8]}, "
                f"unexpected {unexpected[:8]}"
            )

    def save_pretrained(self, directory: str | Path) -> None:
        """config.json (with the backbone architectures inlined), model.safetensors, and the tokenizer."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.saved_config().to_json(directory / CONFIG_FILE)
        safetensors.torch.save_model(self, str(directory / WEIGHTS_FILE))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory / TOKENIZER_DIR)

    def saved_config(self) -> FusionConfig:
        """This model's config, self-contained: the backbones are described by their live architectures."""
        config = copy.deepcopy(self.config)
        lm = config.language_model
        lm.source = lm.python_package = lm.gguf_file = lm.tokenizer_source = None
        lm.architecture = architecture_dict(self.language_model)
        vision = config.vision_tower
        vision.source = None
        vision.architecture = architecture_dict(self.vision.tower)
        vision.drop_last_layers = 0  # the saved architecture already counts only the kept blocks
        return config

    def attach_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Add the vision special tokens, grow the embeddings if needed, and build the sequence builder."""
        added = add_vision_tokens(tokenizer, self.config.sequence)
        embeddings = self.language_model.get_input_embeddings()
        if len(tokenizer) > embeddings.num_embeddings:
            self.language_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        if added:
            new_ids = tokenizer.convert_tokens_to_ids(
                [self.config.sequence.vision_start_token, self.config.sequence.vision_end_token]
            )
            self._initialise_rows_to_mean(new_ids)
            logger.info("added %d vision special tokens, embeddings initialised to the mean row", added)
        self.tokenizer = tokenizer
        self._sequence_builder = SequenceBuilder(tokenizer, self.config, self.native_image_grid)

    @property
    def sequence_builder(self) -> SequenceBuilder:
        if self._sequence_builder is None:
            raise RuntimeError("this FUSION model has no tokenizer: call attach_tokenizer(tokenizer) first")
        return self._sequence_builder

    @torch.no_grad()
    def _initialise_rows_to_mean(self, token_ids: list[int]) -> None:
        tables = [self.language_model.get_input_embeddings().weight]
        output = self.language_model.get_output_embeddings()
        if output is not None and output.weight is not tables[0]:
            tables.append(output.weight)
        for table in tables:
            keep = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)
            keep[token_ids] = False
            table[token_ids] = table[keep].mean(dim=0, keepdim=True).to(table.dtype)

    def _check_image_geometry(self, tower: VisionTower) -> int:
        image_size = self.config.image.image_size
        patch = self.vision.patch_size
        if image_size < patch:
            raise ConfigError(f"image.image_size={image_size} is smaller than the ViT patch size {patch}")
        if isinstance(tower, SiglipVisionModel) and tower.config.image_size != image_size:
            raise ConfigError(
                f"image.image_size={image_size} differs from the vision tower's image_size {tower.config.image_size}"
            )
        return image_size // patch  # the patch convolution drops a remainder (384 px / patch 14 -> 27)

    # -- components, freezing, parameter counts -------------------------------------------------------------------
    def components(self) -> dict[str, nn.Module]:
        parts: dict[str, nn.Module | None] = {
            "language_model": self.language_model,
            "vision_tower": self.vision,
            "mm_projector": self.mm_projector,
            "aux_projector": self.aux_projector,
            "interaction_layers": self.card,
        }
        return {name: module for name, module in parts.items() if module is not None}

    def parameter_counts(self) -> dict[str, int]:
        return {name: sum(p.numel() for p in module.parameters()) for name, module in self.components().items()}

    def parameter_table(self) -> str:
        counts = self.parameter_counts()
        total = sum(counts.values())
        lines = [f"{'component':<20}{'parameters':>16}{'share':>9}"]
        lines += [f"{name:<20}{count:>16,}{count / total:>9.1%}" for name, count in counts.items()]
        lines.append(f"{'total':<20}{total:>16,}")
        return "\n".join(lines)

    def set_trainable(self, trainable: dict[str, bool]) -> None:
        """Freeze or unfreeze whole components by name; logs what is frozen and what is trained."""
        parts = self.components()
        unknown = sorted(set(trainable) - set(parts))
        if unknown:
            raise KeyError(f"unknown FUSION component(s) {unknown}; known: {sorted(parts)}")
        for name, flag in trainable.items():
            parts[name].requires_grad_(flag)
        self._log_components("trainable state changed")

    def _log_components(self, reason: str) -> None:
        for name, module in self.components().items():
            params = list(module.parameters())
            trained = sum(p.numel() for p in params if p.requires_grad)
            state = "trained" if trained == sum(p.numel() for p in params) else "frozen" if trained == 0 else "partly"
            logger.info("%s: %s %s (%s parameters)", reason, name, state, f"{sum(p.numel() for p in params):,}")

    def enable_gradient_checkpointing(self) -> None:
        """Recompute decoder and ViT blocks in backward (active in training mode).

        CARD relies on a transformers behaviour that is asserted here: a `GradientCheckpointingLayer` checkpoints
        its `forward`, not `__call__`, so module hooks (CARD's, FSDP2's) stay outside the recomputed region and
        run once per step. If a transformers release checkpointed `__call__`, the recompute in backward would run
        without the CARD context and silently give wrong gradients."""
        if self.card is not None:
            for layer in self.card.attached_layers:
                check_hooks_outside_checkpoint(layer)
        for backbone in (self.language_model, self.vision.tower):
            if hasattr(backbone, "activation_checkpointing_enable"):
                backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # -- forward --------------------------------------------------------------------------------------------------
    def forward(self, batch: FusionBatch, *, loss_chunk_tokens: int | None = None, dsm: bool = True) -> FusionOutput:
        """Logits and, with labels, the loss. With `loss_chunk_tokens` the LM loss is computed from the final
        hidden states in chunks of that many supervised tokens and no logits are returned (training). `dsm=False`
        skips the DSM terms (and the ViT pass of text-only samples' questions) for callers that use `lm_loss` alone."""
        compute_dsm = dsm and batch.labels is not None and self.config.dsm_weight > 0
        embeddings, card_context, dsm = self.prepare_inputs(batch, compute_dsm=compute_dsm)
        chunked = loss_chunk_tokens is not None and batch.labels is not None
        if chunked:
            hidden = self._run_language_model(batch, embeddings, card_context, hidden_only=True)
        else:
            logits = self._run_language_model(batch, embeddings, card_context, hidden_only=False)
        if batch.labels is None:
            return FusionOutput(logits=logits, loss=None, lm_loss=None, dsm_text=None, dsm_image=None)
        if chunked:
            logits = None
            lm_sum, count = chunked_cross_entropy_sum(
                hidden, batch.labels, self.language_model.get_output_embeddings(), loss_chunk_tokens
            )
        else:
            lm_sum, count = cross_entropy_sum(logits, batch.labels)
        lm_loss = lm_sum / count
        loss = lm_loss if dsm is None else lm_loss + self.config.dsm_weight * dsm.total
        return FusionOutput(
            logits=logits,
            loss=loss,
            lm_loss=lm_loss,
            dsm_text=None if dsm is None else dsm.text,
            dsm_image=None if dsm is None else dsm.image,
            lm_loss_sum=lm_sum,
            num_supervised=count,
        )

    def _run_language_model(self, batch: FusionBatch, embeddings: torch.Tensor, card_context: CardContext | None,
                            *, hidden_only: bool) -> torch.Tensor:
        """The LLM over the prepared embeddings: its logits, or (`hidden_only`) its final hidden states, from which
        callers project only the positions they need."""
        run = dict(inputs_embeds=embeddings, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                   use_cache=False)
        with self.card_context(card_context):
            if hidden_only:
                return self.language_model.model(**run).last_hidden_state
            return self.language_model(**run).logits

    @contextlib.contextmanager
    def card_context(self, context: CardContext | None) -> Iterator[None]:
        if self.card is None:
            yield
        else:
            with self.card.active(context):
                yield

    def prepare_inputs(
        self, batch: FusionBatch, compute_dsm: bool
    ) -> tuple[torch.Tensor, CardContext | None, DsmTerms | None]:
        """LLM input embeddings with image tokens and initial latents scattered in, the CARD context, DSM terms.

        DSM is computed only when asked (training with dsm_weight > 0, which config validation ties to TUNE); only
        then do text-only samples get a ViT pass, of their question alone.
        """
        embeddings = self.language_model.get_input_embeddings()(batch.input_ids)
        uniform = self.uniform_execution and torch.is_grad_enabled()
        context = None
        rebuilt_questions: list[Reconstruction] = []
        rebuilt_patches: list[Reconstruction] = []
        if batch.num_images > 0:
            features = self.encode_images(batch, compute_dsm)
            embeddings, context = self._insert_image_features(embeddings, batch, features)
            if features.rebuilt_question is not None:
                rebuilt_questions.append(features.rebuilt_question)
            if features.rebuilt_patches is not None:
                rebuilt_patches.append(features.rebuilt_patches)
        elif uniform:
            embeddings, context = self._placeholder_vision_pass(embeddings, batch)
        if not compute_dsm:
            return embeddings, context, None
        text_only_question = self.rebuild_text_only_questions(batch)
        if text_only_question is not None:
            rebuilt_questions.append(text_only_question)
        elif uniform:
            embeddings = self._placeholder_text_pass(embeddings)
        dsm = dual_semantic_mapping_loss(rebuilt_questions, rebuilt_patches, device=embeddings.device)
        return embeddings, context, dsm

    def _placeholder_vision_pass(
        self, embeddings: torch.Tensor, batch: FusionBatch
    ) -> tuple[torch.Tensor, CardContext | None]:
        """A batch without images: run the image path on one blank image (and a one-token question) and add it
        with zero weight; CARD gets a placeholder context so every interaction layer runs too."""
        views, size = self.config.image.tile_grid**2 + 1, self.config.image.image_size
        device = embeddings.device
        latent_count = batch.latent_count or self.config.card.eval_latent_count
        one_token = torch.ones(1, 1, dtype=torch.bool, device=device)
        blank = dataclasses.replace(
            batch,
            has_image=torch.ones(1, dtype=torch.bool, device=device),
            pixel_values=torch.zeros(1, views, 3, size, size, device=device),
            image_positions=torch.zeros(1, self.native_image_grid**2, dtype=torch.long, device=device),
            image_grid=self.native_image_grid,
            vit_text_ids=batch.input_ids[:1, :1],
            vit_text_mask=one_token,
            latent_count=latent_count if self.card is not None else 0,
            # one block on the blank image, for question-guided tiles
            latent_rows=torch.zeros(1, dtype=torch.long, device=device),
            latent_vit_text_ids=batch.input_ids[:1, :1],
            latent_vit_text_mask=one_token,
        )
        features = self.encode_images(blank, compute_dsm=False)
        unused = features.image_tokens.sum()
        context = None
        if features.tile_map is not None:
            unused = unused + features.tile_map.sum()
            context = CardContext(
                latent_positions=batch.latent_positions,
                latent_rows=batch.latent_rows,
                question_end_positions=batch.question_end_positions,
                windows=latent_windows(features.tile_map, latent_count, self.config.card.window_size),
                block_images=batch.latent_rows,
                placeholder=True,
            )
        return embeddings + 0.0 * unused.to(embeddings.dtype), context

    def _placeholder_text_pass(self, embeddings: torch.Tensor) -> torch.Tensor:
        """No text-only question to rebuild: run the DSM text pass on one token with zero weight."""
        token = self.language_model.get_input_embeddings()(torch.zeros(1, 1, dtype=torch.long,
                                                                       device=embeddings.device))
        mask = torch.ones(1, 1, dtype=torch.bool, device=embeddings.device)
        features = self.vision.encode_text(self.aux_projector(token), mask)
        rebuilt = self.mm_projector(features.to(self.mm_projector[0].weight.dtype))
        return embeddings + 0.0 * rebuilt.sum().to(embeddings.dtype)

    def _insert_image_features(
        self, embeddings: torch.Tensor, batch: FusionBatch, features: _ImageFeatures
    ) -> tuple[torch.Tensor, CardContext | None]:
        """Scatter the image tokens and initial latents into the embeddings; build the CARD context."""
        image_rows = torch.nonzero(batch.has_image).squeeze(1)
        rows = image_rows[:, None].expand_as(batch.image_positions)
        embeddings = embeddings.index_put((rows, batch.image_positions), features.image_tokens.to(embeddings.dtype))

        context = None
        if self.card is not None and batch.latent_count > 0 and batch.latent_positions.numel() > 0:
            if features.tile_map is None:
                raise RuntimeError("CARD needs the tile map but none was encoded")
            if batch.latent_positions.shape[1] != batch.latent_count:
                raise ValueError(
                    f"batch.latent_positions has {batch.latent_positions.shape[1]} slots per block, "
                    f"latent_count is {batch.latent_count}"
                )
            # a question-guided map has one row per block (its images were looked up when it was encoded)
            block_images = (torch.arange(batch.latent_rows.shape[0], device=batch.latent_rows.device)
                            if features.tile_map_per_block else self.block_images(batch))
            latents = initial_latents(features.tile_map, batch.latent_count)[block_images]
            latent_rows = batch.latent_rows[:, None].expand_as(batch.latent_positions)
            embeddings = embeddings.index_put((latent_rows, batch.latent_positions), latents.to(embeddings.dtype))
            context = CardContext(
                latent_positions=batch.latent_positions,
                latent_rows=batch.latent_rows,
                question_end_positions=batch.question_end_positions,
                windows=latent_windows(features.tile_map, batch.latent_count, self.config.card.window_size),
                block_images=block_images,
            )
        return embeddings, context

    def rebuild_text_only_questions(self, batch: FusionBatch) -> Reconstruction | None:
        """The DSM text term's pairs for text-only samples (None when none has ViT text).

        Their question embeddings go through the aux projector and the ViT blocks alone (no patch tokens, padding
        by the explicit mask), then the same connector and mm projector as the image samples' question.
        """
        if self.aux_projector is None:
            raise RuntimeError("the DSM text term needs the aux projector, which exists only with use_tune")
        # A row without ViT text (every question empty) has nothing to rebuild and, with no patches, no key.
        has_text = batch.text_only_vit_text_mask.any(dim=1)
        ids, mask = batch.text_only_vit_text_ids[has_text], batch.text_only_vit_text_mask[has_text]
        if ids.numel() == 0:
            return None
        question_embeddings = self.language_model.get_input_embeddings()(ids)
        features = self.vision.encode_text(self.aux_projector(question_embeddings), mask)
        rebuilt = self.mm_projector(features.to(self.mm_projector[0].weight.dtype))
        return Reconstruction(target=question_embeddings, rebuilt=rebuilt, mask=mask)

    def vit_text_guide(self, vit_text_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TUNE's text for the ViT: the LLM's embeddings of the question ids and their aux-projected guide."""
        question_embeddings = self.language_model.get_input_embeddings()(vit_text_ids)
        guide_input = question_embeddings
        if self.config.tune.normalize_guide_input:  # parameter-free: nothing new to train or checkpoint
            guide_input = F.rms_norm(question_embeddings, question_embeddings.shape[-1:], eps=1e-6)
        return question_embeddings, self.aux_projector(guide_input)

    def encode_images(self, batch: FusionBatch, compute_dsm: bool) -> _ImageFeatures:
        pixels = batch.pixel_values  # the tower's embedding casts pixels to its own dtype
        num_images, views = pixels.shape[:2]
        projector_dtype = self.mm_projector[0].weight.dtype
        needs_tiles = self.card is not None and batch.latent_count > 0
        full_views = pixels[:, -1]
        tiles = pixels[:, :-1].flatten(0, 1)

        tile_features = None
        question_embeddings = None
        guided_tiles = needs_tiles and self.config.guides_tiles_by_question
        # With one tile the tile is the full view's own pixels (StaticHdImageProcessor): its patches are embedded
        # once, and without TUNE its features are the full view's.
        one_tile = self.config.image.tile_grid == 1
        if self.config.use_tune:
            question_embeddings, guide = self.vit_text_guide(batch.vit_text_ids)
            patches = self.vision.embed_patches(full_views)
            encoding = self.vision.encode_embedded(patches, guide, batch.vit_text_mask)
            if needs_tiles:
                tile_patches = patches if one_tile else self.vision.embed_patches(tiles)
                tile_features = (self._question_guided_tile_features(tile_patches, batch) if guided_tiles
                                 else self.vision.encode_embedded(tile_patches).features)
        elif needs_tiles and one_tile:
            encoding = self.vision(full_views)  # the tile map is read from the full view's image tokens below
        elif needs_tiles:
            # Without text the full view and the tiles share one ViT batch.
            encoding = self.vision(pixels.flatten(0, 1))
            per_view = encoding.features.unflatten(0, (num_images, views))
            tile_features = per_view[:, :-1].flatten(0, 1)
            encoding.features = per_view[:, -1]
            encoding.patch_embeddings = encoding.patch_embeddings.unflatten(0, (num_images, views))[:, -1]
        else:
            encoding = self.vision(full_views)

        projected = self.mm_projector(encoding.features.to(projector_dtype))
        num_patches = encoding.patch_embeddings.shape[1]
        image_tokens = projected[:, :num_patches]

        rebuilt_question = rebuilt_patches = None
        if compute_dsm and self.aux_projector is not None and question_embeddings is not None:
            rebuilt_question = Reconstruction(
                target=question_embeddings, rebuilt=projected[:, num_patches:], mask=batch.vit_text_mask
            )
            # Only image samples reach this pass, so every row is a real image (never a blank) and every patch counts.
            rebuilt_patches = Reconstruction(target=encoding.patch_embeddings, rebuilt=self.aux_projector(image_tokens))

        if batch.image_grid != self.native_image_grid:
            image_tokens = interpolate_image_tokens(image_tokens, batch.image_grid)
        if batch.image_positions.shape[1] != image_tokens.shape[1]:
            raise ValueError(
                f"batch has {batch.image_positions.shape[1]} image slots per image, the model makes "
                f"{image_tokens.shape[1]} tokens (grid {batch.image_grid})"
            )
        tile_map = None
        if tile_features is not None:
            tile_map = stitch_tiles(self.mm_projector(tile_features.to(projector_dtype)), self.config.image.tile_grid)
        elif needs_tiles:  # one text-free tile: the full view itself
            tile_map = stitch_tiles(projected[:, :num_patches], 1)
        return _ImageFeatures(
            image_tokens=image_tokens,
            tile_map=tile_map,
            rebuilt_question=rebuilt_question,
            rebuilt_patches=rebuilt_patches,
            tile_map_per_block=guided_tiles,
        )

    def _question_guided_tile_features(self, embedded: torch.Tensor, batch: FusionBatch) -> torch.Tensor:
        """(NB * g*g, s*s, C) connector input of each latent block's tiles, encoded beside that block's own question
        (card.question_guided_tiles), from the (NI * g*g, P, C) tile patches embedded once per image, whatever its
        number of turns."""
        per_image = self.config.image.tile_grid**2
        block_tiles = embedded.unflatten(0, (-1, per_image))[self.block_images(batch)].flatten(0, 1)
        _, guide = self.vit_text_guide(batch.latent_vit_text_ids)
        guide = guide.repeat_interleave(per_image, dim=0)
        mask = batch.latent_vit_text_mask.repeat_interleave(per_image, dim=0)
        return self.vision.encode_embedded(block_tiles, guide, mask).features[:, : embedded.shape[1]]

    @staticmethod
    def block_images(batch: FusionBatch) -> torch.Tensor:
        """(NB,) index into the per-image tensors of each latent block's image."""
        block_images = batch.image_index_of_rows()[batch.latent_rows]
        if bool((block_images < 0).any()):
            raise ValueError("batch has latent blocks on text-only rows")
        return block_images

    # -- generation -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_ids(
        self,
        batch: FusionBatch,
        *,
        max_new_tokens: int = 64,
        stop_token_ids: Sequence[int] = (),
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        pad_token_id: int = 0,
    ) -> torch.Tensor:
        """(B, T) new token ids for a left-padded generation batch; rows are padded after their stop token.

        The prefill runs the interaction layers (explicit CARD context); decode steps reuse the KV cache and run
        the stock decoder only.
        """
        embeddings, context, _ = self.prepare_inputs(batch, compute_dsm=False)
        cache = DynamicCache(config=self.language_model.config)
        attention_mask = batch.attention_mask
        with self.card_context(context):
            output = self.language_model(
                inputs_embeds=embeddings,
                attention_mask=attention_mask,
                position_ids=batch.position_ids,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        next_positions = batch.position_ids[:, -1] + 1
        stop = torch.tensor(list(stop_token_ids), dtype=torch.long, device=attention_mask.device)
        finished = torch.zeros(batch.batch_size, dtype=torch.bool, device=attention_mask.device)
        generated: list[torch.Tensor] = []
        logits = output.logits[:, -1]
        for step in range(max_new_tokens):
            tokens = self._choose_tokens(logits, do_sample, temperature, top_k, top_p, generator)
            # Finished rows report padding but keep feeding a real token id (the pad id need not be embeddable).
            generated.append(torch.where(finished, torch.full_like(tokens, pad_token_id), tokens))
            finished |= torch.isin(tokens, stop)
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch.batch_size, 1)], dim=1)
            output = self.language_model(
                input_ids=tokens[:, None],
                attention_mask=attention_mask,
                position_ids=next_positions[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            next_positions = next_positions + 1
            logits = output.logits[:, -1]
        if not generated:
            return torch.zeros(batch.batch_size, 0, dtype=torch.long, device=attention_mask.device)
        return torch.stack(generated, dim=1)

    @staticmethod
    def _choose_tokens(
        logits: torch.Tensor,
        do_sample: bool,
        temperature: float,
        top_k: int,
        top_p: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        if not do_sample:
            return logits.argmax(dim=-1)
        scores = logits.float() / max(temperature, 1e-5)
        if top_k > 0:
            kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if top_p < 1.0:
            sorted_scores, order = scores.sort(dim=-1, descending=True)
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            drop_sorted = cumulative - sorted_scores.softmax(dim=-1) > top_p  # always keeps the best token
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)

    @torch.no_grad()
    def generate(
        self,
        images: Sequence[Image.Image | None],
        conversations: Sequence[Conversation],
        *,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[str]:
        """Answer the last human turn of each conversation (batched; Q fixed to card.eval_latent_count)."""
        if len(images) != len(conversations):
            raise ValueError(f"{len(images)} images for {len(conversations)} conversations")
        builder = self.sequence_builder
        device = self.mm_projector[0].weight.device
        batch = builder.collate(list(zip(images, conversations)), for_generation=True).to(device)
        generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        stop_ids = builder.stop_token_ids()
        new_ids = self.generate_ids(
            batch,
            max_new_tokens=max_new_tokens,
            stop_token_ids=stop_ids,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
            pad_token_id=builder.pad_id,
        )
        answers = []
        for row in new_ids.tolist():
            cut = next((index for index, token in enumerate(row) if token in stop_ids), len(row))
            answers.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
        return answers

    @torch.no_grad()
    def answer_log_likelihoods(
        self, images: Sequence[Image.Image | None], conversations: Sequence[Conversation], *, batch_size: int = 16
    ) -> list[AnswerLikelihood]:
        """How likely the model finds the last gpt turn of each conversation, given everything before it: the sum
        of its tokens' log-probabilities (the template's end-of-turn token not counted), its token count, and
        whether greedy decoding would write it. Q fixed to card.eval_latent_count, as in `generate`."""
        if len(images) != len(conversations):
            raise ValueError(f"{len(images)} images for {len(conversations)} conversations")
        builder = self.sequence_builder
        device = self.mm_projector[0].weight.device
        results = []
        for start in range(0, len(conversations), batch_size):
            samples = list(zip(images[start:start + batch_size], conversations[start:start + batch_size]))
            batch = builder.collate(samples, latent_count=builder.latent_count(for_generation=True)).to(device)
            embeddings, card_context, _ = self.prepare_inputs(batch, compute_dsm=False)
            # logits only where an answer token is predicted: a batch's full-vocabulary logits would not fit for a
            # real LLM (16 x 2048 x 150k floats)
            hidden = self._run_language_model(batch, embeddings, card_context, hidden_only=True)
            targets = batch.labels[:, 1:]
            if builder.end_of_turn_id is not None:
                targets = targets.masked_fill(targets == builder.end_of_turn_id, IGNORE_INDEX)
            for row in range(len(samples)):
                where = last_answer_positions(targets[row])
                if where.numel() == 0:
                    raise ValueError(f"conversation {start + row} has no answer token to score (empty last gpt turn?)")
                logits = self.language_model.get_output_embeddings()(hidden[row, where]).float()
                chosen = logits.log_softmax(-1).gather(1, targets[row, where][:, None]).sum()
                hits = logits.argmax(-1) == targets[row, where]
                results.append(AnswerLikelihood(float(chosen), int(where.numel()), bool(hits.all()), bool(hits[-1])))
        return results


@dataclass(frozen=True)
class AnswerLikelihood:
    log_probability: float  # summed over the answer's tokens
    tokens: int
    greedy: bool  # greedy decoding writes exactly these tokens
    last_greedy: bool  # given the answer's other tokens, greedy decoding writes its last one


def last_answer_positions(targets: torch.Tensor) -> torch.Tensor:
    """Positions of the last run of supervised targets in a (L,) row: the last answer, when the template's
    end-of-turn tokens are masked (earlier answers are separated from it by their unsupervised questions)."""
    supervised = torch.nonzero(targets != IGNORE_INDEX).flatten()
    if supervised.numel() == 0:
        return supervised
    gaps = torch.nonzero(supervised.diff() > 1).flatten()
    return supervised[int(gaps[-1]) + 1:] if gaps.numel() else supervised


def weight_files(directory: Path) -> list[Path]:
    """`model.safetensors`, or the shards of a distributed checkpoint (`model-00001-of-00004.safetensors`, ...)."""
    single = directory / WEIGHTS_FILE
    if single.is_file():
        return [single]
    shards = sorted(directory.glob("model-*-of-*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"FUSION checkpoint {str(directory)!r} has no {WEIGHTS_FILE} nor safetensors shards")
    return shards


def _shared_names(module: nn.Module) -> dict[str, set[str]]:
    """Parameter name -> the other names of the same tensor (tied embeddings)."""
    by_tensor: dict[int, set[str]] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(tensor), set()).add(name)
    return {name: names - {name} for names in by_tensor.values() for name in names}


def check_hooks_outside_checkpoint(layer: nn.Module) -> None:
    """Fail unless `layer` checkpoints its `forward` (transformers' GradientCheckpointingLayer contract), so its
    forward hooks run outside the recomputed region."""
    forward = type(layer).forward
    if not isinstance(layer, GradientCheckpointingLayer) or not hasattr(forward, "__wrapped__"):
        raise RuntimeError(
            f"{type(layer).__name__} is not a transformers GradientCheckpointingLayer whose `forward` is the "
            "checkpointed function; gradient checkpointing could recompute CARD's hooks without their context. "
            "Use a transformers 5.x release, or disable gradient checkpointing."
        )
