"""The optional perplexity rule: the LM's perplexity of each text, batched without padding leaking in."""

import math

import pytest
import torch

from pipeline.synthesis import synthesize
from tests.filters.test_judges import accepted, rejected
from tests.synthesis.conftest import small_config


@pytest.fixture(scope="module")
def tiny_lm(tiny_synthesis_models):
    from generators.llm.transformers_backend import TransformersLLM

    return TransformersLLM(TransformersLLM.Params(path=str(tiny_synthesis_models["llm"]), device="cpu"))


def test_batched_perplexity_equals_each_text_alone_and_the_models_own_loss(tiny_lm):
    texts = ["A red ball sits on a table.", "Three yellow balloons above a green house under warm light today.", "x"]
    together = tiny_lm.perplexity(texts)
    for text, value in zip(texts, together, strict=True):
        assert value == pytest.approx(tiny_lm.perplexity([text])[0], rel=1e-4)
        ids = torch.tensor([[tiny_lm.tokenizer.bos_token_id, *tiny_lm.tokenizer(text, add_special_tokens=False)
                             ["input_ids"]]])
        with torch.inference_mode():
            loss = tiny_lm.model(input_ids=ids, labels=ids).loss
        assert value == pytest.approx(math.exp(float(loss)), rel=1e-4)


def test_the_perplexity_stage_keeps_scores_and_rejects_above_its_threshold(tmp_path, tiny_synthesis_models):
    def run(out, threshold, fields="[description, caption]"):
        synthesize(small_config(
            "categories={SynthColor: {train: 4}}", "dataset.max_attempts_factor=1",
            f"models={{lm: {{backend: transformers_llm, params: {{path: '{tiny_synthesis_models['llm']}', "
            "device: cpu}}}",
            f"stages=[{{name: procedural_scene}}, {{name: perplexity, params: {{model: lm, fields: {fields}, "
            f"max_perplexity: {threshold}}}}}]"), out, use_ray=False)
        return accepted(out), rejected(out)

    kept, dropped = run(tmp_path / "keep", "null")
    assert len(kept) == 4 and not dropped
    values = [r.scores["perplexity/description/perplexity"] for r in kept]
    assert all(v > 1 for v in values) and all("perplexity/caption/perplexity" in r.scores for r in kept)
    cut = sorted(values)[1]  # between the two lowest: three of four descriptions are above it
    kept, dropped = run(tmp_path / "cut", cut + 1e-3, "[description]")
    assert sorted(r.scores["perplexity/description/perplexity"] for r in kept) == sorted(values)[:2]
    assert all(r["reason"].startswith("perplexity: ") and f"> {cut + 1e-3:g}" in r["reason"] for r in dropped)
