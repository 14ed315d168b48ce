"""`transformers_vlm`: batched chat generation with a vision-language model through transformers, for judges
that look at the image (e.g. LLaVA-OneVision, Qwen2.5-VL or any model ``AutoModelForImageTextToText`` loads).

A request is an LLM chat request plus ``images`` (RGB uint8 arrays); they go at the start of the first user
turn, the way these models' chat templates expect them. Everything else (per-row seeded sampling, xgrammar
JSON constraint, finish reasons, token counts) is the `transformers_llm` backend's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from generators.llm.transformers_backend import TransformersLLM, TransformersLLMParams
from pipeline.model_backend import register_backend


class TransformersVLMParams(TransformersLLMParams):
    pass


@register_backend("transformers_vlm")
class TransformersVLM(TransformersLLM):
    Params = TransformersVLMParams
    params: TransformersVLMParams

    def _load_model(self, path: str, dtype: Any) -> tuple[Any, Any]:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        params = self.params
        if params.gguf_file:
            raise ValueError(f"{self.kind} {params.path!r}: GGUF files are not supported for vision models")
        self.processor = AutoProcessor.from_pretrained(path, revision=params.revision)
        if not getattr(self.processor, "chat_template", None):
            raise ValueError(f"{self.kind} {params.path!r}: the processor has no chat template")
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"
        return tokenizer, AutoModelForImageTextToText.from_pretrained(path, revision=params.revision, dtype=dtype)

    def _prompt(self, request: dict[str, Any]) -> str:
        images = request.get("images") or []
        messages, placed = [], False
        for message in request["messages"]:
            content: Any = message["content"]
            if message["role"] == "user" and not placed:
                content = [*({"type": "image"} for _ in images), {"type": "text", "text": content}]
                placed = True
            elif isinstance(content, str):
                content = [{"type": "text", "text": content}]
            messages.append({"role": message["role"], "content": content})
        if images and not placed:
            raise ValueError("a VLM request with images needs a user message to put them in")
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _encode(self, requests: list[dict[str, Any]], prompts: list[str]) -> dict[str, Any]:
        images = [np.asarray(image, dtype=np.uint8) for request in requests for image in request.get("images") or []]
        encoded = self.processor(text=prompts, images=images or None, return_tensors="pt", padding=True,
                                 add_special_tokens=False)
        return dict(encoded)
