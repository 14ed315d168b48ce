"""Tiny random backbones and a locally trained tokenizer, saved to directories like real checkpoints.

Tests load these through exactly the code path that loads real models (`from_pretrained` on a directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedTokenizerFast,
    Siglip2VisionConfig,
    Siglip2VisionModel,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from model.config import TINY_LLAMA, TINY_PHI3, TINY_QWEN2, TINY_SIGLIP, TINY_SIGLIP2_NAFLEX

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>"]

CORPUS = [
    "What colour is the ball? The ball is red.",
    "How many cubes are on the table? There are three cubes.",
    "Describe the image concisely. A blue square sits left of a green circle.",
    "Where is the triangle? The triangle is at the top right corner.",
    "Which shape is larger, the circle or the square? The circle is larger.",
    "Read the text in the image. The sign says OPEN.",
    "Answer with the option's letter from the given choices directly. A. red B. blue C. green",
    "Is there a yellow star? Yes, there is one yellow star below the red ball.",
    "What is to the left of the cat? A small brown dog is to the left of the cat.",
    "Count the balloons. Seven balloons float above the house!",
    "The quick brown fox jumps over the lazy dog 0123456789.",
]


def build_tokenizer(directory: Path) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the built-in corpus, with a ChatML chat template and a pad token."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    wrapped.chat_template = CHATML_TEMPLATE
    wrapped.save_pretrained(directory)
    return wrapped


def build_causal_lm(directory: Path, architecture: dict[str, Any], vocab_size: int, seed: int = 0) -> Path:
    fields = dict(architecture)
    model_type = fields.pop("model_type")
    fields["vocab_size"] = vocab_size
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    return directory


def _build_vision_model(directory: Path, model_class, config_class, architecture: dict[str, Any], seed: int) -> Path:
    fields = {k: v for k, v in architecture.items() if k != "model_type"}
    torch.manual_seed(seed)
    model_class(config_class(**fields)).save_pretrained(directory)
    return directory


def build_siglip_vision(directory: Path, architecture: dict[str, Any] = TINY_SIGLIP, seed: int = 0) -> Path:
    return _build_vision_model(directory, SiglipVisionModel, SiglipVisionConfig, architecture, seed)


def build_full_siglip(directory: Path, architecture: dict[str, Any] = TINY_SIGLIP, seed: int = 0) -> Path:
    """A full SigLIP (text + vision) checkpoint, the layout of real Hub SigLIP repositories."""
    vision = {k: v for k, v in architecture.items() if k != "model_type"}
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 64, "max_position_embeddings": 16, "pad_token_id": 0, "bos_token_id": 1,
            "eos_token_id": 2}
    torch.manual_seed(seed)
    SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(directory)
    return directory


def build_siglip2_vision(directory: Path, architecture: dict[str, Any] = TINY_SIGLIP2_NAFLEX, seed: int = 0) -> Path:
    return _build_vision_model(directory, Siglip2VisionModel, Siglip2VisionConfig, architecture, seed)


LANGUAGE_MODEL_ARCHITECTURES = {"llama": TINY_LLAMA, "qwen2": TINY_QWEN2, "phi3": TINY_PHI3}


def build_all(root: Path) -> dict[str, Path]:
    """Every tiny checkpoint the model tests use, under `root`; returns name -> directory."""
    paths = {"tokenizer": root / "tokenizer"}
    tokenizer = build_tokenizer(paths["tokenizer"])
    for name, architecture in LANGUAGE_MODEL_ARCHITECTURES.items():
        paths[name] = build_causal_lm(root / name, architecture, vocab_size=len(tokenizer))
    paths["siglip"] = build_siglip_vision(root / "siglip")
    paths["siglip_full"] = build_full_siglip(root / "siglip_full")
    paths["siglip2"] = build_siglip2_vision(root / "siglip2")
    return paths


# --- sample data ---------------------------------------------------------------------------------------------------

def make_image(seed: int, size: tuple[int, int] = (48, 40)):
    """A deterministic RGB noise image (PIL)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


IMAGE_CONVERSATION = [
    {"from": "human", "value": "<image>\nWhat colour is the ball?"},
    {"from": "gpt", "value": "The ball is red."},
    {"from": "human", "value": "How many cubes are on the table?"},
    {"from": "gpt", "value": "There are three cubes."},
]

TEXT_CONVERSATION = [
    {"from": "human", "value": "Count the balloons."},
    {"from": "gpt", "value": "Seven balloons float above the house!"},
]

SHORT_IMAGE_CONVERSATION = [
    {"from": "human", "value": "<image>\nDescribe the image concisely."},
    {"from": "gpt", "value": "A blue square sits left of a green circle."},
]


# --- one tokenizer per chat-template family, built offline ---------------------------------------------------------

# The Llama-3 / 3.1 template as released (without the tool and date preamble): headers, `| trim` on contents, BOS.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                         "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"]

# The Phi-3 / 3.5 template as released: <|user|> / <|assistant|> roles, <|end|> after every message.
PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
PHI3_SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def build_llama3_tokenizer(directory: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE with the Llama-3 special tokens and chat template (BOS, headers, <|eot_id|>)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=LLAMA3_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>",
                                      eos_token="<|eot_id|>", pad_token="<|reserved_special_token_0|>")
    wrapped.add_special_tokens({"extra_special_tokens": LLAMA3_SPECIAL_TOKENS}, replace_extra_special_tokens=False)
    wrapped.chat_template = LLAMA3_TEMPLATE
    wrapped.save_pretrained(directory)
    return wrapped


def build_phi3_tokenizer(directory: Path):
    """A SentencePiece BPE model trained locally, as Phi-3's Llama-style tokenizer with its chat template.

    transformers 5 represents SentencePiece BPE tokenizers by their vocabulary and merges (Metaspace "▁", byte
    fallback); they are read from the trained model through the sentencepiece API, which needs no protobuf (the
    protobuf route breaks when another package pins an older protobuf runtime)."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    directory.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4), model_prefix=str(directory / "spm"), vocab_size=420, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        user_defined_symbols=PHI3_SPECIAL_TOKENS, minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_file=str(directory / "spm.model"))
    vocab = {processor.id_to_piece(index): index for index in range(processor.get_piece_size())}
    tokenizer = LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab), unk_token="<unk>", bos_token="<s>",
                               eos_token="<|endoftext|>", pad_token="<unk>", legacy=False, add_bos_token=False)
    tokenizer.add_special_tokens({"extra_special_tokens": PHI3_SPECIAL_TOKENS}, replace_extra_special_tokens=False)
    tokenizer.chat_template = PHI3_TEMPLATE
    tokenizer.save_pretrained(directory / "tokenizer")
    return tokenizer
