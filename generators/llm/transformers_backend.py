"""`transformers_llm`: batched chat generation with Hugging Face transformers, on CPU or GPU.

Prompts go through the model's own chat template and are left-padded into one ``generate`` call per batch.
Every row samples from its own seeded generator (``PerRowSampler``), so a request's output does not depend
on the other requests of its batch; rows with a JSON schema are constrained by xgrammar (``constrained``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field

from generators.llm.chat import FINISH_LENGTH, FINISH_STOP, chat_result, error_result
from generators.llm.model_source import check_local_or_hub, resolve_model_path, torch_placement
from pipeline.model_backend import ModelBackend, model_revision, register_backend
from pipeline.stage import StageParams

logger = logging.getLogger(__name__)


class TransformersLLMParams(StageParams):
    path: str = Field(description="Local model folder, Hub id, or pkg:<python package> holding the files")
    revision: str | None = Field(None, description="Hub revision (commit) to pin; local folders are hashed")
    gguf_file: str | None = Field(None, description="A GGUF file inside `path` to load (dequantized)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field("auto", description="cpu, cuda, cuda:1, ...; auto: cuda when available")
    cpu_threads: int | None = Field(
        None, ge=1, description="torch threads on CPU (None: torch's default); small models on a shared machine "
        "run many times faster with 1 than with threads competing for busy cores")
    structured_output: Literal["xgrammar", "none"] = Field(
        "xgrammar", description="Constrain rows that carry a JSON schema; none: parse and validate only")
    max_input_tokens: int = Field(4096, ge=16, description="Longer prompts are errors, never silently cut")


@register_backend("transformers_llm")
class TransformersLLM(ModelBackend):
    Params = TransformersLLMParams
    params: TransformersLLMParams

    def __init__(self, params: TransformersLLMParams) -> None:
        super().__init__(params)
        path = resolve_model_path(params.path)
        check_local_or_hub(path, f"{self.kind} path {params.path!r}")
        self.device, dtype = torch_placement(params.device, params.dtype, params.cpu_threads)
        self.tokenizer, self.model = self._load_model(path, dtype)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.to(self.device).eval()
        self.stop_ids = self._stop_token_ids()
        self.compiler = None
        if params.structured_output == "xgrammar":
            from generators.llm.constrained import SchemaCompiler

            self.compiler = SchemaCompiler(self.tokenizer, self.model.config.get_text_config().vocab_size,
                                           self.stop_ids)

    def _load_model(self, path: str, dtype: Any) -> tuple[Any, Any]:
        """The left-padding tokenizer (with a chat template) and the model."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        params = self.params
        extra = {"gguf_file": params.gguf_file} if params.gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(path, revision=params.revision, **extra)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{self.kind} {params.path!r}: the tokenizer has no chat template")
        tokenizer.padding_side = "left"
        return tokenizer, AutoModelForCausalLM.from_pretrained(path, revision=params.revision, dtype=dtype, **extra)

    def _prompt(self, request: dict[str, Any]) -> str:
        return self.tokenizer.apply_chat_template(request["messages"], add_generation_prompt=True, tokenize=False)

    def _encode(self, requests: list[dict[str, Any]], prompts: list[str]) -> dict[str, Any]:
        return dict(self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False))

    @classmethod
    def identity(cls, params: TransformersLLMParams) -> dict[str, Any]:
        path = resolve_model_path(params.path)
        model = params.path + (f"/{params.gguf_file}" if params.gguf_file else "")
        return {"backend": cls.kind, "model": model, "revision": model_revision(path, params.revision),
                "dtype": params.dtype, "structured_output": params.structured_output}

    def _stop_token_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.insert(0, self.tokenizer.eos_token_id)
        if not ids:
            raise ValueError(f"transformers_llm {self.params.path!r}: no end-of-sequence token is configured")
        return ids

    def chat(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One result per request (see ``generators.llm.chat``); a bad request fails alone."""
        prompts, results, live = [], [None] * len(requests), []
        for index, request in enumerate(requests):
            try:
                prompts.append(self._prompt(request))
                live.append(index)
            except Exception as error:  # a template that rejects these messages
                results[index] = error_result(error)
        if live:
            for index, result in zip(live, self._generate([requests[i] for i in live], prompts), strict=True):
                results[index] = result
        return results

    def _generate(self, requests: list[dict[str, Any]], prompts: list[str]) -> list[dict[str, Any]]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        from generators.llm.seeded_sampling import PerRowSampler

        encoded = self._encode(requests, prompts)
        lengths = encoded["attention_mask"].sum(dim=1).tolist()
        if max(lengths) > self.params.max_input_tokens:
            too_long = error_result(f"prompt of {max(lengths)} tokens exceeds max_input_tokens="
                                    f"{self.params.max_input_tokens}")
            if len(requests) == 1:
                return [too_long]
            return [r for request, prompt in zip(requests, prompts, strict=True)
                    for r in self._generate([request], [prompt])]
        encoded = {k: v.to(self.device) for k, v in encoded.items()}
        prompt_length = encoded["input_ids"].shape[1]
        limits = [int(r["max_new_tokens"]) for r in requests]
        processors = []
        schemas = [r.get("schema") for r in requests]
        if self.compiler is not None and any(schemas):
            processors.append(self.compiler.processor(schemas, prompt_length))
        processors.append(PerRowSampler([r["seed"] for r in requests], [float(r["temperature"]) for r in requests],
                                        [float(r["top_p"]) for r in requests], limits, prompt_length, self.stop_ids[0]))
        config = GenerationConfig(max_new_tokens=max(limits) + 1, do_sample=False, num_beams=1,
                                  pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.stop_ids)
        with torch.inference_mode():
            output = self.model.generate(**encoded, generation_config=config,
                                         logits_processor=LogitsProcessorList(processors))
        results = []
        for row, (length, limit) in enumerate(zip(lengths, limits, strict=True)):
            tokens = output[row, prompt_length:].tolist()[:limit]
            end = next((i for i, t in enumerate(tokens) if t in self.stop_ids), None)
            finish = FINISH_STOP if end is not None else FINISH_LENGTH
            kept = tokens[:end] if end is not None else tokens
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            results.append(chat_result(text, finish, length, len(kept) + (end is not None)))
        return results

    def perplexity(self, texts: list[str]) -> list[float]:
        """Per-text perplexity, exp(mean token negative log-likelihood), of plain text (no chat template):
        what the perplexity filter thresholds. Rows are right-padded (so positions are those of the text alone)
        and padding is masked out of the mean."""
        import torch

        tokenizer = self.tokenizer
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        rows = [bos + tokenizer(str(t), add_special_tokens=False)["input_ids"][:self.params.max_input_tokens - 1]
                for t in texts]
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        weights = mask[:, 1:].float()
        mean = (losses * weights).sum(1) / weights.sum(1).clamp(min=1)
        return [float(torch.exp(value)) for value in mean]
