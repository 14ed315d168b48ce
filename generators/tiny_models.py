"""Tiny random-initialised models, saved as ordinary model folders and loaded by the same code as real ones.

`fusion make-tiny-models DIR` writes:

- ``DIR/llm``: a Llama-style causal LM (hidden 64, 2 layers) with a byte-level BPE tokenizer trained here
  and a ChatML chat template. A real LLM folder holds the same files: ``config.json``, weights
  (``model.safetensors`` or shards with an index), ``tokenizer.json`` / ``tokenizer_config.json`` with a
  ``chat_template``, and ``generation_config.json``.
- ``DIR/diffusion``: a Stable Diffusion pipeline (UNet, VAE, CLIP text encoder, Euler scheduler) of about
  1.7M parameters rendering 32 px images. A real folder is what ``DiffusionPipeline.save_pretrained`` writes:
  ``model_index.json`` and one subfolder per component.
- ``DIR/clip``: an open_clip model (ViT image tower, text transformer, the real CLIP BPE vocabulary that ships
  with open_clip), loadable as ``local-dir:DIR/clip``. A real folder holds ``open_clip_config.json``
  (``model_cfg`` and ``preprocess_cfg``) and ``open_clip_model.safetensors``.
- ``DIR/vlm``: a LLaVA-style vision-language model (a CLIP vision tower of 32 px, a projector, the tiny LLM's
  architecture and tokenizer with an ``<image>`` token) with a processor and a chat template, loaded by
  ``AutoProcessor`` and ``AutoModelForImageTextToText``. A real folder (LLaVA-OneVision, Qwen2.5-VL) holds
  ``config.json``, weights, the tokenizer files, ``preprocessor_config.json`` / ``processor_config.json`` and
  a chat template.

Outputs are random: these exercise code paths offline, they do not make sensible data.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>"]
# Enough text for the tokenizer to learn words and JSON punctuation; bytes cover everything else.
CORPUS = [
    'A red ball sits on a wooden table beside two blue cubes under warm afternoon light.',
    'The question is answered with a single word or phrase: "red", "three", "left", "yes".',
    '{"qa": [{"question": "What colour is the ball?", "answer": "red"}], "description": "A red ball."}',
    '{"caption": "Three yellow balloons above a green house", "options": ["A", "B", "C", "D"]}',
    'Answer with the option\'s letter from the given choices directly. A. red B. blue C. green D. pink',
    'On the left image the cat is black; on the right image the cat is white and sleeps on a sofa.',
    'A billboard by the highway reads "FRESH COFFEE 24 HOURS" in large white letters.',
    'The quick brown fox jumps over the lazy dog 0123456789, [ ] { } : " \\n',
]


def build_tiny_llm(directory: Path, seed: int = 0, hidden_size: int = 64, num_attention_heads: int = 4) -> Path:
    """The tiny Llama; vLLM's CPU attention needs a head dim of 32 or more (e.g. hidden 128 with 2 heads)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = Path(directory)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 8, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<|im_end|>",
                                      bos_token="<|im_start|>")
    wrapped.chat_template = CHATML_TEMPLATE
    wrapped.save_pretrained(directory)
    config = LlamaConfig(vocab_size=len(wrapped), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=num_attention_heads,
                         num_key_value_heads=max(1, num_attention_heads // 2), max_position_embeddings=2048,
                         pad_token_id=wrapped.pad_token_id, bos_token_id=wrapped.bos_token_id,
                         eos_token_id=wrapped.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(pad_token_id=wrapped.pad_token_id, eos_token_id=wrapped.eos_token_id,
                                               bos_token_id=wrapped.bos_token_id)
    model.save_pretrained(directory)
    return directory


def clip_bpe_vocabulary() -> tuple[dict[str, int], list[str]]:
    """The real CLIP BPE vocabulary and merges, from the file open_clip ships (works offline)."""
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    pairs = [tuple(merge.split()) for merge in merges]
    alphabet = [chr(c) for c in _byte_alphabet()]
    vocab = alphabet + [a + "</w>" for a in alphabet] + ["".join(p) for p in pairs] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(vocab)}, [" ".join(p) for p in pairs]


def _byte_alphabet() -> list[int]:
    codes = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in codes]
    return codes + [256 + i for i in range(len(extra))]


def build_tiny_diffusion(directory: Path, seed: int = 0, image_size: int = 32) -> Path:
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    directory = Path(directory)
    vocab, merges = clip_bpe_vocabulary()
    tokenizer_dir = directory / "_tokenizer_source"
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab))
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    # transformers 5 ignores vocab_file= on the constructor: load the files from their folder.
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=77)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                                eos_token_id=vocab["<|endoftext|>"], bos_token_id=vocab["<|startoftext|>"]))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=8, sample_size=image_size)
    unet = UNet2DConditionModel(sample_size=image_size // 2, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(directory)
    import shutil

    shutil.rmtree(tokenizer_dir)
    return directory


TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def build_tiny_clip(directory: Path, seed: int = 0) -> Path:
    import open_clip
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "open_clip_model.safetensors")
    preprocess = {"size": TINY_CLIP_CONFIG["vision_cfg"]["image_size"], "mean": [0.48145466, 0.4578275, 0.40821073],
                  "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic", "resize_mode": "shortest"}
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG,
                                                                 "preprocess_cfg": preprocess}, indent=2))
    return directory


# ChatML with the content-parts messages of vision-language chat templates: an image part becomes <image>.
VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_vlm(directory: Path, llm_directory: Path, seed: int = 0) -> Path:
    import torch
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    directory = Path(directory)
    tokenizer = AutoTokenizer.from_pretrained(llm_directory)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(
        "<image>"), vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).save_pretrained(directory)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    # The vision tower adds a CLS token, which the "default" strategy drops: 16 image tokens per image.
    LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, chat_template=VLM_CHAT_TEMPLATE).save_pretrained(directory)
    return directory


def build_tiny_models(root: Path, seed: int = 0) -> dict[str, Path]:
    root = Path(root)
    llm = build_tiny_llm(root / "llm", seed)
    return {"llm": llm, "diffusion": build_tiny_diffusion(root / "diffusion", seed),
            "clip": build_tiny_clip(root / "clip", seed), "vlm": build_tiny_vlm(root / "vlm", llm, seed)}
