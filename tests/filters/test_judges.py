"""QA verification by models: the LLM judge, the VLM judge and statement scoring drop failed pairs only, record
every verdict, replay from the cache, and run through the real transformers and open_clip backends."""

import json
import shutil

import numpy as np
import pytest

from filters.qa_verdicts import qa_pairs
from pipeline.record import SampleRecord
from pipeline.synthesis import synthesize
from tests.filters.plugin_stages import WRONG_ANSWER
from tests.marks import SEVERAL_RAY_RUNS
from tests.synthesis.conftest import small_config
from tests.synthesis.test_pipeline import data_files, tar_members

PLUGINS = "plugins=[tests.filters.plugin_stages]"


def judged_config(markers, *stages: str, garble_every: int = 0, categories: str = "SynthConvShort: {train: 8}",
                  more_models: str = ""):
    return small_config(
        PLUGINS, f"categories={{{categories}}}", "dataset.max_attempts_factor=1",
        f"models={{judge: {{backend: test_scripted_judge, params: {{marker_dir: '{markers}', "
        f"garble_every: {garble_every}}}}}{more_models}}}",
        "stages=[{name: procedural_scene}, {name: test_wrong_second_answer}, " + ", ".join(stages) + "]")


def accepted(root) -> list[SampleRecord]:
    return [SampleRecord.from_json_dict(json.loads(data)) for tar in sorted((root / "data").rglob("*.tar"))
            for name, data in tar_members(tar).items() if name.endswith(".json")]


def rejected(root) -> list[dict]:
    import pyarrow.parquet as pq

    return [{"stage": row["reject_stage"], "reason": row["reject_reason"],
             "record": SampleRecord.from_json_dict(json.loads(row["record_json"]))}
            for path in sorted((root / "rejects").rglob("*.parquet")) for row in pq.read_table(path).to_pylist()]


def test_a_pair_the_llm_judge_fails_is_dropped_and_the_rest_of_the_sample_kept(tmp_path):
    both = "SynthConvShort: {train: 6}, SynthColor: {train: 3}"  # several QA pairs, and a caption's one pair
    clean = accepted_after(tmp_path / "clean", small_config(PLUGINS, f"categories={{{both}}}",
                                                            "stages=[{name: procedural_scene}]"))
    out = tmp_path / "judged"
    synthesize(judged_config(tmp_path / "m", "{name: llm_judge, params: {model: judge, min_qa: 1}}",
                             categories=both), out, use_ray=False)
    judged = {r.key: r for r in accepted(out)}
    for original in clean:
        pairs = qa_pairs(original)
        if len(pairs) == 1:  # its only pair was corrupted: too few pairs left
            assert original.key not in judged
            continue
        record = judged[original.key]
        assert qa_pairs(record) == [pairs[0], *pairs[2:]]  # only the corrupted second pair left
        assert record.conversations[0]["value"].startswith("<image>\n")
        dropped = record.metadata["qa_dropped"]
        assert [(d["stage"], d["qa"], d["answer"]) for d in dropped] == [("llm_judge", 1, WRONG_ANSWER)]
        verdicts = [v for v in record.metadata["qa_verdicts"] if v["stage"] == "llm_judge"]
        assert [v["verdict"] for v in verdicts] == ["pass", "fail"] + ["pass"] * (len(pairs) - 2)
        assert record.scores["llm_judge/qa_failed"] == 1.0
        assert record.provenance["prompt_templates"]["llm_judge"].startswith("judge/qa_description.v1@")
    assert any(len(qa_pairs(r)) == 1 for r in clean) and judged  # both cases were exercised
    reasons = [r["reason"] for r in rejected(out) if r["stage"] == "llm_judge"]
    assert reasons and all(r.startswith("too_few_qa: 0 of 1 QA pairs passed") for r in reasons)


def accepted_after(out, config) -> list[SampleRecord]:
    synthesize(config, out, use_ray=False)
    return sorted(accepted(out), key=lambda r: r.key)


def test_a_judge_that_never_answers_validly_rejects_with_its_reason_or_passes_when_told(tmp_path):
    out = tmp_path / "reject"
    synthesize(judged_config(tmp_path / "m", "{name: llm_judge, params: {model: judge}}", garble_every=1), out,
               use_ray=False)
    reasons = {r["reason"] for r in rejected(out)}
    assert not accepted(out) and reasons
    assert all(r.startswith("judge_failed: llm_malformed_json:") and "(all 2 attempts failed)" in r for r in reasons)
    out = tmp_path / "pass"
    synthesize(judged_config(tmp_path / "m2", "{name: llm_judge, params: {model: judge, on_failure: pass}}",
                             garble_every=1), out, use_ray=False)
    kept = accepted(out)
    assert len(kept) == 8 and all(v["verdict"] == "pass" and v["reason"].startswith("unverified: llm_malformed_json")
                                  for r in kept for v in r.metadata["qa_verdicts"])


def test_statements_are_scored_by_clip_and_a_low_one_drops_its_pair(tmp_path, tiny_synthesis_models):
    clip = f"local-dir:{tiny_synthesis_models['clip']}"
    config = judged_config(
        tmp_path / "m", "{name: statement_score, params: {model: judge, clip_model: clip, min_cosine: 0.999}}",
        more_models=f", clip: {{backend: open_clip, params: {{model: '{clip}'}}}}")
    out = tmp_path / "out"
    synthesize(config, out, use_ray=False)
    records = accepted(out) + [r["record"] for r in rejected(out)]
    assert len(records) == 8
    for record in records:
        assert len(record.metadata["qa_statements"]["statement_score"]) == len(qa_pairs(record))
        statements = record.metadata["qa_statements"]["statement_score"]
        values = [s["clip_cosine"] for s in statements]
        assert record.scores["statement_score/statement_cosine_mean"] == pytest.approx(sum(values) / len(values),
                                                                                         abs=1e-4)
    verdicts = [v for r in records for v in r.metadata.get("qa_verdicts", [])]
    assert all(v["reason"].startswith("statement clip_cosine") for v in verdicts)
    # A random tiny CLIP scores far below 0.999: every pair fails, so every sample is rejected with the reason.
    reasons = [r["reason"] for r in rejected(out) if r["stage"] == "statement_score"]
    assert len(reasons) == 8 and all("too_few_qa: 0 of" in r and "< 0.999" in r for r in reasons)


@SEVERAL_RAY_RUNS
def test_judges_with_the_tiny_llm_run_on_ray_and_replay_from_the_cache(local_ray, tmp_path, tiny_synthesis_models):
    """The real transformers backend (a random tiny LM under xgrammar's JSON constraint) as the shared judge of
    two stages: each sample gets its verdicts or a judge_failed reason, and a rerun makes no model call."""
    llm = tiny_synthesis_models["llm"]
    clip = f"local-dir:{tiny_synthesis_models['clip']}"
    config = small_config(
        "categories={SynthConvShort: {train: 4}}", "dataset.max_attempts_factor=1",
        f"models={{llm: {{backend: transformers_llm, params: {{path: '{llm}', device: cpu, cpu_threads: 1}}, "
        "batch_size: 8, resources: {num_cpus: 0.5}}, "
        f"clip: {{backend: open_clip, params: {{model: '{clip}'}}, resources: {{num_cpus: 0.5}}}}}}",
        "stages=[{name: procedural_scene}, {name: llm_judge, params: {model: llm, on_failure: pass, "
        "sampling: {temperature: 0.0, max_new_tokens: 96}}}, {name: statement_score, params: {model: llm, "
        "clip_model: clip, on_failure: pass, sampling: {temperature: 0.0, max_new_tokens: 96}}}]")
    out = tmp_path / "out"
    first = synthesize(config, out)
    kept = accepted(out)
    assert len(kept) + len(rejected(out)) == 4
    for record in kept:
        assert {v["stage"] for v in record.metadata["qa_verdicts"]} == {"llm_judge", "statement_score"}
        assert record.provenance["stages"]["llm_judge"]["llm_backend"] == "transformers_llm"
    judge_calls = next(s for s in first.manifest["stages"] if s["stage"] == "llm_judge")["cache"]
    assert judge_calls["hits"] == 0 and judge_calls["misses"] >= 4
    before = data_files(out)
    for name in ("data", "work", "rejects", "manifest.json"):  # everything but the cache: the same run, replayed
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    again = synthesize(config, out)
    for stage in ("llm_judge", "statement_score"):
        row = next(s for s in again.manifest["stages"] if s["stage"] == stage)
        assert row["cache"]["misses"] == 0 and row["cache"]["hits"] > 0, row
    assert data_files(out) == before


def test_the_vlm_judge_sends_the_image_through_the_real_transformers_vlm_backend(tmp_path, tiny_synthesis_models):
    """A tiny random LLaVA: the image reaches the model (its pixels change the output), and each sample gets the
    judge's verdicts or the judge_failed reason, never a crash."""
    from generators.llm.chat import Sampling, chat_request
    from generators.llm.transformers_vlm import TransformersVLM

    vlm = TransformersVLM(TransformersVLM.Params(path=str(tiny_synthesis_models["vlm"]), device="cpu",
                                                 structured_output="none"))
    messages = [{"role": "system", "content": "Judge."}, {"role": "user", "content": "What colour is it?"}]
    greedy = Sampling(temperature=0.0, max_new_tokens=12)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(2)]
    requests = [{**chat_request(messages, 1, greedy), "images": [image]} for image in images]
    texts = [r["text"] for r in vlm.chat(requests)]
    alone = vlm.chat(requests[:1])[0]["text"]
    assert texts[0] == alone  # a row does not depend on its batch
    assert vlm.chat([{**requests[0], "images": [images[0] // 4]}])[0]["text"] != alone or texts[0] != texts[1]

    out = tmp_path / "out"
    config = small_config(
        "categories={SynthConvShort: {train: 3}}", "dataset.max_attempts_factor=1",
        f"models={{vlm: {{backend: transformers_vlm, params: {{path: '{tiny_synthesis_models['vlm']}', "
        "device: cpu, cpu_threads: 1}}}",
        "stages=[{name: procedural_scene}, {name: vlm_judge, params: {model: vlm, "
        "sampling: {temperature: 0.0, max_new_tokens: 64}}}]")
    synthesize(config, out, use_ray=False)
    kept, dropped = accepted(out), rejected(out)
    assert len(kept) + len(dropped) == 3
    assert all(r["stage"] == "vlm_judge" and r["reason"].startswith(("judge_failed: llm_", "too_few_qa: "))
               for r in dropped)
    for record in kept:
        assert {v["stage"] for v in record.metadata["qa_verdicts"]} == {"vlm_judge"}
        assert record.provenance["prompt_templates"]["vlm_judge"].startswith("judge/qa.v1@")
