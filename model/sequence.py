"""Conversations -> FUSION token sequences, labels, image/latent slots, question-end markers, and batches.

Input: LLaVA-style conversations `[{"from": "human"|"gpt"|"system", "value": ...}]`, the first human turn usually
starting with "<image>\\n", plus a PIL image or None. The chat template is the tokenizer's own (or the config's),
rendered once per sample with private-use sentinel characters marking where each question and answer sit, so any
template works without knowing its header strings. Layout of an image sample (paper layout):

    ...user header <vs>[G*G image tokens]<ve><vs>[Q latents]<ve>\\nQUESTION1 <end> assistant header ANSWER1 <end>
    ...user header <vs>[Q latents]<ve>QUESTION2 ... ANSWER2 ...

Only answer tokens and the end-of-turn token after each answer are supervised. The question-end marker of a turn is
the token just before its answer (the last token of the assistant header). Text-only samples get no vision tokens
and no latent blocks at all, but (with TUNE) the same ViT text as an image sample, for the DSM text term.
Truncation drops whole trailing turns (or the tail of the first answer), so every kept latent block keeps its
question end.

Encoding runs in two steps so a data loader can tokenize before it decodes any image and before Q is drawn for a
batch: `tokenize` (chat template + tokenizer, the costly text work, independent of Q and of the pixels) and
`assemble` (vision blocks, latent slots and truncation for a given Q; plain list work).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from model.batch import FusionBatch
from model.card import latent_side
from model.config import FusionConfig, SequenceConfig
from model.image_processing import StaticHdImageProcessor

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}

# Private-use characters: chat templates copy them through untouched (even templates that trim content).
_SLOT = "\ue000"  # start of a user message: where the vision / latent blocks go
_ANSWER_OPEN = "\ue001"
_ANSWER_CLOSE = "\ue002"
_SENTINELS = re.compile(f"([{_SLOT}{_ANSWER_OPEN}{_ANSWER_CLOSE}])")

Conversation = Sequence[dict[str, str]]


class SequenceTooLongError(ValueError):
    """The sample cannot be truncated to `max_length` without losing its first question."""


class LabelMaskError(ValueError):
    """Supervised tokens are not exactly the answers: the chat template and the tokenizer disagree."""


# End-of-turn / end-of-text tokens of the common chat families; any that the vocabulary has stops generation
# (Llama-3.1 ends tool turns with <|eom_id|> and raw text with <|end_of_text|>, Phi-3 uses <|end|> and
# <|endoftext|>, ChatML <|im_end|>).
STOP_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|end|>", "<|endoftext|>")


@dataclass
class Turn:
    question: str
    answer: str | None  # None for the final turn of a generation prompt


def parse_conversation(conversation: Conversation, for_generation: bool) -> tuple[str | None, list[Turn]]:
    """(system prompt, turns) from LLaVA records; `<image>` placeholders are removed from the questions."""
    messages = list(conversation)
    system = None
    if messages and messages[0].get("from") == "system":
        system = messages.pop(0)["value"]
    turns: list[Turn] = []
    for index, message in enumerate(messages):
        role = message.get("from")
        expected = "human" if index % 2 == 0 else "gpt"
        if role != expected:
            raise ValueError(f"conversation message {index}: expected from={expected!r}, got {role!r}")
        value = str(message.get("value", ""))
        if role == "human":
            turns.append(Turn(question=value.replace(IMAGE_PLACEHOLDER, "").strip(), answer=None))
        else:
            turns[-1].answer = value.strip()
    if not turns:
        raise ValueError("conversation has no human turn")
    last_answered = turns[-1].answer is not None
    if for_generation and last_answered:
        raise ValueError("a generation prompt must end with a human turn")
    if not for_generation and not last_answered:
        raise ValueError("a training conversation must end with a gpt turn")
    return system, turns


def supervised_runs(input_ids: Sequence[int], labels: Sequence[int]) -> list[list[int]]:
    """The contiguous spans of supervised tokens (one per answer, with its end-of-turn token)."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(input_ids, labels):
        supervised = label != IGNORE_INDEX
        if supervised:
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = supervised
    return runs


def add_vision_tokens(tokenizer: PreTrainedTokenizerBase, config: SequenceConfig) -> int:
    """Add `<vision_start>` / `<vision_end>` as special tokens; returns how many were new."""
    tokens = [config.vision_start_token, config.vision_end_token]
    return tokenizer.add_special_tokens({"extra_special_tokens": tokens}, replace_extra_special_tokens=False)


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    image_positions: list[int]
    latent_starts: list[int]  # first position of each latent block (one per kept turn of an image sample)
    question_ends: list[int]  # question-end position of each kept turn
    vit_text_ids: list[int]  # with TUNE, for every sample: image or text-only, one policy and cap
    pixel_values: torch.Tensor | None
    # each latent block's own question ids (capped per turn), with card.question_guided_tiles; else empty
    latent_vit_text_ids: list[list[int]] = field(default_factory=list)


@dataclass
class TokenizedConversation:
    """A conversation rendered and tokenized, before any vision block is placed (independent of Q and pixels).

    `pieces` alternates sentinel markers (`_SLOT`, `_ANSWER_OPEN`, `_ANSWER_CLOSE`) and token id lists, in the
    order of the rendered chat template."""

    pieces: list[str | list[int]]
    vit_text_ids_per_turn: list[list[int]]  # each question's ViT text ids, already capped per turn
    num_turns: int
    for_generation: bool

    @property
    def num_tokens(self) -> int:
        """Text tokens of the rendered conversation (vision blocks and latents not counted)."""
        return sum(len(piece) for piece in self.pieces if not isinstance(piece, str))

    @property
    def num_supervised(self) -> int:
        """Answer tokens plus one end-of-turn token per answer (before truncation)."""
        count, in_answer = 0, False
        for piece in self.pieces:
            if piece == _ANSWER_OPEN:
                in_answer = True
            elif piece == _ANSWER_CLOSE:
                in_answer = False
                count += 1
            elif in_answer:
                count += len(piece)
        return count


@dataclass
class _Layout:
    ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    image_positions: list[int] = field(default_factory=list)
    latent_starts: list[int] = field(default_factory=list)
    question_ends: list[int] = field(default_factory=list)
    turn_ends: list[int] = field(default_factory=list)

    def extend(self, ids: list[int], supervised: bool = False) -> None:
        self.ids.extend(ids)
        self.labels.extend(ids if supervised else [IGNORE_INDEX] * len(ids))


class SequenceBuilder:
    """Turns (image, conversation) pairs into `FusionBatch`es; one instance per tokenizer and config."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: FusionConfig, native_image_grid: int) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.native_image_grid = native_image_grid
        self.image_processor = StaticHdImageProcessor(config.image)
        vocab = tokenizer.get_vocab()
        missing = [t for t in (config.sequence.vision_start_token, config.sequence.vision_end_token) if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks {missing}: call model.sequence.add_vision_tokens first")
        self.vision_start_id = vocab[config.sequence.vision_start_token]
        self.vision_end_id = vocab[config.sequence.vision_end_token]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # Any valid id works for padding and slots: the attention mask and the slot positions are explicit.
        self.pad_id: int = pad if pad is not None else 0
        self.chat_template = config.sequence.chat_template
        if self.chat_template is None and not getattr(tokenizer, "chat_template", None):
            raise ValueError("tokenizer has no chat template: set sequence.chat_template in the FUSION config")
        self.end_of_turn_id = self._detect_end_of_turn_id()

    # -- public API ---------------------------------------------------------------------------------------------
    def image_grid(self, for_generation: bool) -> int:
        """Side of the image-token grid placed in the sequence (FUSION-L interpolates at inference only)."""
        if for_generation and self.config.inference_image_grid is not None:
            return self.config.inference_image_grid
        return self.native_image_grid

    def latent_count(self, for_generation: bool, rng: random.Random | None = None) -> int:
        """Q for a batch: 0 without CARD, fixed for generation, sampled from the configured set for training."""
        if not self.config.use_card:
            return 0
        if for_generation:
            return self.config.card.eval_latent_count
        return (rng or random).choice(self.config.card.latent_counts)

    def stop_token_ids(self) -> list[int]:
        """The template's end of turn, the tokenizer's eos, and every known stop token in the vocabulary."""
        vocab = self.tokenizer.get_vocab()
        ids = {self.end_of_turn_id, self.tokenizer.eos_token_id, *(vocab[t] for t in STOP_TOKENS if t in vocab)}
        return sorted(i for i in ids if i is not None)

    def encode(
        self,
        image: Image.Image | None,
        conversation: Conversation,
        *,
        latent_count: int,
        for_generation: bool = False,
        max_length: int | None = None,
    ) -> EncodedSample:
        tokenized = self.tokenize(conversation, has_image=image is not None, for_generation=for_generation)
        sample = self.assemble(tokenized, has_image=image is not None, latent_count=latent_count,
                               max_length=max_length)
        if image is not None:
            sample.pixel_values = self.image_processor(image)
        return sample

    def tokenize(self, conversation: Conversation, *, has_image: bool, for_generation: bool = False
                 ) -> TokenizedConversation:
        """Render the chat template and tokenize: the text half of `encode`, with no image and no Q."""
        system, turns = parse_conversation(conversation, for_generation)
        rendered = self._render(system, turns, for_generation, has_image=has_image)
        split = _SENTINELS.split(rendered)
        if split.count(_SLOT) != len(turns):
            raise ValueError(
                f"chat template {'(config)' if self.chat_template else 'of the tokenizer'} rendered "
                f"{split.count(_SLOT)} user messages for {len(turns)} turns"
            )
        texts = [piece for piece in split if piece not in (_SLOT, _ANSWER_OPEN, _ANSWER_CLOSE)]
        tokenized = iter(self.tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else iter(())
        pieces: list[str | list[int]] = [
            piece if piece in (_SLOT, _ANSWER_OPEN, _ANSWER_CLOSE) else next(tokenized) for piece in split
        ]
        vit_texts = self._vit_text_ids_per_turn(turns) if self.config.use_tune else [[] for _ in turns]
        return TokenizedConversation(pieces, vit_texts, len(turns), for_generation)

    def assemble(self, tokenized: TokenizedConversation, *, has_image: bool, latent_count: int,
                 max_length: int | None = None) -> EncodedSample:
        """Place the vision blocks for Q = `latent_count` and truncate: the list half of `encode` (no pixels)."""
        for_generation = tokenized.for_generation
        image_tokens = self.image_grid(for_generation) ** 2 if has_image else 0
        latents_per_turn = latent_count if has_image and self.config.use_card else 0
        if latents_per_turn:
            latent_side(latents_per_turn)  # rejects a Q that is not a perfect square
        layout = self._layout(tokenized, image_tokens, latents_per_turn)
        kept_turns = self._truncate(layout, max_length or self.config.sequence.max_length, for_generation)
        guided = latents_per_turn and self.config.guides_tiles_by_question
        return EncodedSample(
            input_ids=layout.ids,
            labels=layout.labels,
            image_positions=layout.image_positions,
            latent_starts=layout.latent_starts[:kept_turns] if latents_per_turn else [],
            question_ends=layout.question_ends[:kept_turns],
            vit_text_ids=self._join_vit_texts(tokenized.vit_text_ids_per_turn[:kept_turns]),
            pixel_values=None,
            latent_vit_text_ids=list(tokenized.vit_text_ids_per_turn[:kept_turns]) if guided else [],
        )

    def verify_label_masks(self) -> None:
        """Raise `LabelMaskError` unless the supervised tokens of a probe conversation are exactly its answers,
        each followed by the end-of-turn token, for an image and a text-only sample alike.

        The classic silent failure of LLaVA-style trainers is a template/tokenizer mismatch that masks every label
        (loss 0.0); run this once before training."""
        probe = [
            {"from": "human", "value": "<image>\nWhat colour is the ball?"},
            {"from": "gpt", "value": "The ball is red."},
            {"from": "human", "value": "And the box?"},
            {"from": "gpt", "value": "Blue."},
        ]
        answers = ["The ball is red.", "Blue."]
        end = self.tokenizer.decode([self.end_of_turn_id]) if self.end_of_turn_id is not None else ""
        for has_image in (True, False):
            sample = self.assemble(self.tokenize(probe, has_image=has_image), has_image=has_image,
                                   latent_count=self.latent_count(for_generation=True))
            runs = supervised_runs(sample.input_ids, sample.labels)
            got = [self.tokenizer.decode(run, skip_special_tokens=False).strip() for run in runs]
            expected = [answer + end for answer in answers]
            if got != expected:
                raise LabelMaskError(
                    f"chat template and tokenizer disagree: the supervised tokens decode to {got!r}, expected "
                    f"{expected!r} (has_image={has_image}); check sequence.chat_template"
                )

    def collate(
        self,
        samples: Sequence[tuple[Image.Image | None, Conversation]],
        *,
        latent_count: int | None = None,
        for_generation: bool = False,
        rng: random.Random | None = None,
        max_length: int | None = None,
    ) -> FusionBatch:
        """Encode and pad (right for training, left for generation) a list of (image or None, conversation)."""
        if latent_count is None:
            latent_count = self.latent_count(for_generation, rng)
        if not self.config.use_card:
            latent_count = 0  # Q only exists with CARD; one collate call serves every ablation
        encoded = [
            self.encode(
                image, conversation, latent_count=latent_count, for_generation=for_generation, max_length=max_length
            )
            for image, conversation in samples
        ]
        return self.pad(encoded, latent_count=latent_count, for_generation=for_generation)

    def pad(self, encoded: Sequence[EncodedSample], *, latent_count: int, for_generation: bool) -> FusionBatch:
        batch_size = len(encoded)
        length = max(len(sample.input_ids) for sample in encoded)
        input_ids = torch.full((batch_size, length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
        labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
        offsets = []
        for row, sample in enumerate(encoded):
            size = len(sample.input_ids)
            offset = length - size if for_generation else 0  # left padding for generation
            offsets.append(offset)
            input_ids[row, offset : offset + size] = torch.tensor(sample.input_ids)
            attention_mask[row, offset : offset + size] = 1
            labels[row, offset : offset + size] = torch.tensor(sample.labels)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)

        image_rows = [row for row, sample in enumerate(encoded) if sample.pixel_values is not None]
        grid = self.image_grid(for_generation)
        views, size = self.image_processor.num_views, self.config.image.image_size
        pixel_values = (
            torch.stack([encoded[row].pixel_values for row in image_rows])
            if image_rows
            else torch.zeros(0, views, 3, size, size)
        )
        image_positions = torch.tensor(
            [[p + offsets[row] for p in encoded[row].image_positions] for row in image_rows], dtype=torch.long
        ).reshape(len(image_rows), grid * grid)

        vit_text_ids, vit_text_mask = self.pad_vit_texts([encoded[row].vit_text_ids for row in image_rows])
        text_only_vit_text_ids, text_only_vit_text_mask = self.pad_vit_texts(
            [sample.vit_text_ids for sample in encoded if sample.pixel_values is None]
        )

        starts, rows, question_ends, block_texts = [], [], [], []
        for row, sample in enumerate(encoded):
            for start, question_end in zip(sample.latent_starts, sample.question_ends):
                starts.append(start + offsets[row])
                rows.append(row)
                question_ends.append(question_end + offsets[row])
            block_texts += sample.latent_vit_text_ids
        if block_texts and len(block_texts) != len(starts):
            raise ValueError(f"{len(block_texts)} latent ViT texts for {len(starts)} latent blocks")
        latent_vit_text_ids, latent_vit_text_mask = self.pad_vit_texts(block_texts)
        if not block_texts:  # one row per block, of width 0: no block has a question of its own
            latent_vit_text_ids = latent_vit_text_ids.new_zeros(len(starts), 0)
            latent_vit_text_mask = latent_vit_text_mask.new_zeros(len(starts), 0)
        latent_positions = (
            torch.tensor(starts, dtype=torch.long)[:, None] + torch.arange(latent_count)[None, :]
        ).reshape(len(starts), latent_count)

        return FusionBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=None if for_generation else labels,
            has_image=torch.tensor([sample.pixel_values is not None for sample in encoded], dtype=torch.bool),
            pixel_values=pixel_values,
            image_positions=image_positions,
            image_grid=grid,
            vit_text_ids=vit_text_ids,
            vit_text_mask=vit_text_mask,
            text_only_vit_text_ids=text_only_vit_text_ids,
            text_only_vit_text_mask=text_only_vit_text_mask,
            latent_count=latent_count,
            latent_positions=latent_positions,
            latent_rows=torch.tensor(rows, dtype=torch.long),
            question_end_positions=torch.tensor(question_ends, dtype=torch.long),
            latent_vit_text_ids=latent_vit_text_ids,
            latent_vit_text_mask=latent_vit_text_mask,
        )

    def pad_vit_texts(self, texts: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, longest) right-padded ids and the bool mask of real tokens for N ViT texts."""
        length = max((len(ids) for ids in texts), default=0)
        padded = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), length), dtype=torch.bool)
        for index, ids in enumerate(texts):
            padded[index, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[index, : len(ids)] = True
        return padded, mask

    # -- internals ----------------------------------------------------------------------------------------------
    def _render(self, system: str | None, turns: list[Turn], for_generation: bool, has_image: bool) -> str:
        messages: list[dict[str, Any]] = []
        if system is not None:
            messages.append({"role": "system", "content": system})
        for index, turn in enumerate(turns):
            newline = "\n" if index == 0 and has_image else ""
            messages.append({"role": "user", "content": f"{_SLOT}{newline}{turn.question}"})
            if turn.answer is not None:
                messages.append({"role": "assistant", "content": f"{_ANSWER_OPEN}{turn.answer}{_ANSWER_CLOSE}"})
        kwargs = {"chat_template": self.chat_template} if self.chat_template is not None else {}
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=for_generation, **kwargs
        )

    def _layout(self, tokenized: TokenizedConversation, image_tokens: int, latents_per_turn: int) -> _Layout:
        layout = _Layout()
        turn = -1
        in_answer = supervise_end_of_turn = False
        for piece in tokenized.pieces:
            if piece == _SLOT:
                turn += 1
                self._insert_vision_blocks(layout, turn, image_tokens, latents_per_turn)
            elif piece == _ANSWER_OPEN:
                layout.question_ends.append(len(layout.ids) - 1)
                in_answer = True
            elif piece == _ANSWER_CLOSE:
                in_answer = False
                supervise_end_of_turn = True
                layout.turn_ends.append(len(layout.ids))
            else:
                ids = piece
                if supervise_end_of_turn and ids:
                    layout.extend(ids[:1], supervised=True)  # the template's end-of-turn token ends the answer
                    layout.extend(ids[1:])
                    layout.turn_ends[-1] += 1
                    supervise_end_of_turn = False
                else:
                    layout.extend(ids, supervised=in_answer)
        if tokenized.for_generation:
            layout.question_ends.append(len(layout.ids) - 1)  # the prompt ends with the assistant header
        return layout

    def _insert_vision_blocks(self, layout: _Layout, turn: int, image_tokens: int, latents_per_turn: int) -> None:
        if turn == 0 and image_tokens:
            layout.extend([self.vision_start_id])
            layout.image_positions.extend(range(len(layout.ids), len(layout.ids) + image_tokens))
            layout.extend([self.pad_id] * image_tokens + [self.vision_end_id])
        if latents_per_turn:
            layout.extend([self.vision_start_id])
            layout.latent_starts.append(len(layout.ids))
            layout.extend([self.pad_id] * latents_per_turn + [self.vision_end_id])

    def _truncate(self, layout: _Layout, max_length: int, for_generation: bool) -> int:
        """Cut `layout` to at most `max_length` tokens; returns the number of turns kept."""
        turns = len(layout.question_ends)
        if len(layout.ids) <= max_length:
            return turns
        if for_generation:
            raise SequenceTooLongError(
                f"generation prompt has {len(layout.ids)} tokens, more than max_length={max_length}"
            )
        whole = [index for index, end in enumerate(layout.turn_ends) if end <= max_length]
        if whole:
            kept, cut = whole[-1] + 1, layout.turn_ends[whole[-1]]
        elif layout.question_ends[0] + 1 < max_length:
            kept, cut = 1, max_length  # keep the first question and the head of its answer
        else:
            raise SequenceTooLongError(
                f"first question ends at token {layout.question_ends[0] + 1}, beyond max_length={max_length}"
            )
        del layout.ids[cut:], layout.labels[cut:]
        return kept

    def vit_text_ids(self, tokenized: TokenizedConversation) -> list[int]:
        """The ViT text of a whole conversation, as training gives it to the tower (all kept turns, capped)."""
        return self._join_vit_texts(tokenized.vit_text_ids_per_turn)

    def _vit_text_ids_per_turn(self, turns: list[Turn]) -> list[list[int]]:
        """Each question's ids, capped per turn to its first `vit_text_max_tokens` tokens: a long question keeps
        its start (where the question is asked), and one long turn cannot crowd out the others."""
        cap = self.config.tune.vit_text_max_tokens
        questions = [turn.question for turn in turns]
        encoded = self.tokenizer(questions, add_special_tokens=False)["input_ids"] if questions else []
        return [ids[:cap] for ids in encoded]

    def _join_vit_texts(self, per_turn: list[list[int]]) -> list[int]:
        """The ViT text of the kept turns under the configured policy and total cap (whole turns are dropped,
        oldest first; the most recent question always stays)."""
        tune = self.config.tune
        if not self.config.use_tune:
            return []
        questions = [ids for ids in per_turn if ids]
        if tune.vit_text_policy == "last_question":
            questions = questions[-1:]
        separator = self._vit_separator_ids()
        if tune.vit_text_max_total_tokens is not None:
            while len(questions) > 1 and (
                sum(map(len, questions)) + len(separator) * (len(questions) - 1) > tune.vit_text_max_total_tokens
            ):
                questions = questions[1:]
        joined: list[int] = []
        for index, ids in enumerate(questions):
            joined += (separator if index else []) + ids
        return joined

    def _vit_separator_ids(self) -> list[int]:
        if not hasattr(self, "_separator_ids"):
            separator = self.config.tune.vit_text_separator
            self._separator_ids = (
                self.tokenizer(separator, add_special_tokens=False)["input_ids"] if separator else []
            )
        return self._separator_ids

    def _detect_end_of_turn_id(self) -> int | None:
        rendered = self._render(None, [Turn("q", "a")], for_generation=False, has_image=False)
        if _ANSWER_OPEN not in rendered or _ANSWER_CLOSE not in rendered:
            raise LabelMaskError(
                f"chat template {'(config)' if self.chat_template else 'of the tokenizer'} does not render the "
                "assistant's message: no answer could ever be supervised"
            )
        tail = rendered.split(_ANSWER_CLOSE, 1)[1]
        ids = self.tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
        return ids[0] if ids else None
