"""The transformers LLM backend on the tiny random Llama: per-request seeds, finish reasons, token counts,
and JSON-schema constrained decoding (xgrammar) that yields strict JSON even from a random model."""

import json

from generators.llm.chat import FINISH_ERROR, FINISH_LENGTH, FINISH_STOP, Sampling, chat_request
from generators.prompts import schemas
from generators.prompts.schemas import Limits

MESSAGES = [{"role": "system", "content": "Answer with JSON."}, {"role": "user", "content": "A red ball on a table."}]
OTHER = [{"role": "user", "content": "Describe three yellow balloons above a green house, please, in detail."}]
SAMPLED = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=24)


def texts(results):
    return [r["text"] for r in results]


def test_a_requests_output_depends_on_its_seed_not_on_its_batch(tiny_llm):
    alone = tiny_llm.chat([chat_request(MESSAGES, 7, SAMPLED)])[0]
    # Different batch neighbours, positions and prompt lengths (so different left padding).
    batched = tiny_llm.chat([chat_request(OTHER, 1, SAMPLED), chat_request(MESSAGES, 7, SAMPLED),
                             chat_request(OTHER, 2, Sampling(temperature=0.0, max_new_tokens=5))])
    assert batched[1]["text"] == alone["text"] and alone["completion_tokens"] > 0
    again = tiny_llm.chat([chat_request(MESSAGES, 7, SAMPLED), chat_request(MESSAGES, 8, SAMPLED)])
    assert again[0]["text"] == alone["text"]
    assert again[1]["text"] != alone["text"]  # another seed samples another text


def test_greedy_ignores_the_seed(tiny_llm):
    greedy = Sampling(temperature=0.0, max_new_tokens=12)
    first, second = tiny_llm.chat([chat_request(MESSAGES, 1, greedy), chat_request(MESSAGES, 2, greedy)])
    assert first["text"] == second["text"]


def test_results_report_finish_reason_and_token_counts(tiny_llm):
    short = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=3)
    cut = tiny_llm.chat([chat_request(MESSAGES, 3, short)])[0]
    assert cut["finish_reason"] == FINISH_LENGTH and cut["completion_tokens"] == 3 and cut["parsed"] is None
    prompt = tiny_llm.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert cut["prompt_tokens"] == len(tiny_llm.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert set(cut) == {"text", "parsed", "finish_reason", "prompt_tokens", "completion_tokens", "error"}


def test_a_prompt_over_max_input_tokens_fails_alone(tiny_llm):
    long_messages = [{"role": "user", "content": "word " * 5000}]
    results = tiny_llm.chat([chat_request(long_messages, 1, SAMPLED), chat_request(MESSAGES, 7, SAMPLED)])
    assert results[0]["finish_reason"] == FINISH_ERROR and "max_input_tokens" in results[0]["error"]
    assert results[1]["text"] == tiny_llm.chat([chat_request(MESSAGES, 7, SAMPLED)])[0]["text"]


def test_structured_output_is_strict_json_of_the_schema_even_from_a_random_model(tiny_llm):
    schema = schemas.ShortQAs.model_json_schema()
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=256)
    results = tiny_llm.chat([chat_request(MESSAGES, seed, sampling, schema) for seed in range(12)])
    finished = [r for r in results if r["finish_reason"] == FINISH_STOP]
    assert len(finished) >= 4, [r["finish_reason"] for r in results]
    loose = Limits(short_answer_max_words=1000, max_qas=8)
    for result in finished:
        assert result["parsed"] == json.loads(result["text"])  # strict: no raw control characters in strings
        schemas.ShortQAs.model_validate(result["parsed"], context={"limits": loose})
    # Unconstrained, the same random model never writes JSON.
    free = tiny_llm.chat([chat_request(MESSAGES, seed, sampling) for seed in range(4)])
    assert all(r["parsed"] is None for r in free)


def test_constrained_rows_share_a_batch_with_free_rows_without_changing_them(tiny_llm):
    schema = schemas.Caption.model_json_schema()
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=64)
    free_alone = tiny_llm.chat([chat_request(MESSAGES, 5, sampling)])[0]
    constrained_alone = tiny_llm.chat([chat_request(MESSAGES, 6, sampling, schema)])[0]
    mixed = tiny_llm.chat([chat_request(MESSAGES, 5, sampling), chat_request(MESSAGES, 6, sampling, schema)])
    assert texts(mixed) == [free_alone["text"], constrained_alone["text"]]
    assert set(json.loads(constrained_alone["text"])) == {"caption"} and free_alone["parsed"] is None
