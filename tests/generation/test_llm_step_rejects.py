"""Malformed, truncated, empty, over-long and wrong-schema LLM outputs each become a reject with a distinct
reason after bounded retries (each attempt its own cache key), inside the real pipeline, without crashing it."""

import json

from pipeline.config import load_config
from pipeline.synthesis import synthesize

CASES = ["good", "malformed", "truncated", "empty", "overlong", "wrongschema", "flaky"]
EXPECTED = {"malformed": "llm_malformed_json", "truncated": "llm_truncated", "empty": "llm_empty",
            "overlong": "llm_over_long", "wrongschema": "llm_schema"}


def rejected_records(out):
    import pyarrow.parquet as pq

    return [row for path in sorted((out / "rejects").rglob("*.parquet")) for row in pq.read_table(path).to_pylist()]


def scripted_config(tmp_path, models):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("".join(f"case {case} of a red ball on a table\n" for case in CASES))
    stages = ("[{name: seed_captions, params: {source: text, path: %s}},"
              " {name: llm_description, params: {model: llm, max_attempts: 2,"
              "   limits: {all: {description_min_words: 1}}}},"
              " {name: diffusion_image, params: {model: diffusion}},"
              " {name: llm_qa, params: {model: llm, max_attempts: 2}}, {name: rules}]" % seeds)
    return load_config("synth-tiny-models", [
        "ray.progress=false", "dataset.unit_size=7", "dataset.max_attempts_factor=1.0",
        "plugins=[tests.generation.scripted_llm]", "categories={SynthConvShort: {train: 7}}",
        f"models.llm={{backend: test_scripted_llm, params: {{calls_dir: {tmp_path / 'calls'}}}}}",
        f"models.diffusion.params.path={models['diffusion']}", f"stages={stages}"])


def test_each_bad_output_kind_is_rejected_with_its_own_reason(tmp_path, tiny_synthesis_models):
    config = scripted_config(tmp_path, tiny_synthesis_models)
    result = synthesize(config, tmp_path / "out", use_ray=False)
    rejects = rejected_records(tmp_path / "out")
    by_case = {json.loads(r["record_json"])["seed_caption"].split()[1]: r for r in rejects}
    assert set(by_case) == set(EXPECTED)
    for case, reason in EXPECTED.items():
        record = by_case[case]
        assert record["reject_stage"] == "llm_description", record
        assert record["reject_reason"].startswith(f"{reason}: ") and "all 2 attempts failed" in record["reject_reason"]
    assert len({r["reject_reason"].split(":")[0] for r in rejects}) == 5

    counts = result.manifest["counts"]["categories"]["SynthConvShort"]["train"]
    assert counts["accepted"] == 2  # good, and flaky on its second attempt
    description = next(s for s in result.manifest["stages"] if s["stage"] == "llm_description")
    # 5 bad x 2 attempts + good + flaky x 2, every attempt a call of its own (its own seed, its own cache key)
    assert description["cache"] == {"hits": 0, "misses": 13}
    assert description["reasons"] == {reason: 1 for reason in EXPECTED.values()}
    calls = len(list((tmp_path / "calls").glob("call.*")))
    assert calls == 13 + 2  # and two QA calls

    # Resubmitted: replayed from the cache, no call made.
    for name in ("data", "work", "rejects", "manifest.json"):
        path = tmp_path / "out" / name
        __import__("shutil").rmtree(path) if path.is_dir() else path.unlink()
    again = synthesize(config, tmp_path / "out", use_ray=False)
    assert len(list((tmp_path / "calls").glob("call.*"))) == calls
    assert next(s for s in again.manifest["stages"] if s["stage"] == "llm_description")["cache"] == {
        "hits": 13, "misses": 0}


def test_contrast_pairs_render_side_by_side_and_best_of_n_keeps_one_candidate(tmp_path, tiny_synthesis_models):
    """Two descriptions from one seed, two panels per candidate composited, two candidates scored by the
    filters' CLIP stage and one kept by choose_image; the QA names left or right."""
    import io

    import numpy as np
    from PIL import Image

    from pipeline.record import SampleRecord
    from tests.synthesis.test_pipeline import tar_members

    stages = ("[{name: seed_captions}, {name: llm_description, params: {model: llm,"
              "   limits: {all: {description_min_words: 1}}}},"
              " {name: diffusion_image, params: {model: diffusion, candidates: 2}},"
              " {name: clip_score, id: clip, params: {model: clip}},"
              " {name: choose_image, params: {score: clip/clip_cosine}},"
              " {name: llm_qa, params: {model: llm}}, {name: rules}]")
    config = load_config("synth-tiny-models", [
        "ray.progress=false", "dataset.unit_size=3", "plugins=[tests.generation.scripted_llm]",
        "categories={SynthContrastShort: {train: 3}}",
        f"models.llm={{backend: test_scripted_llm, params: {{calls_dir: {tmp_path / 'calls'}}}}}",
        f"models.diffusion.params.path={tiny_synthesis_models['diffusion']}",
        f"models.clip={{backend: open_clip, params: {{model: 'local-dir:{tiny_synthesis_models['clip']}'}}}}",
        f"stages={stages}"])
    result = synthesize(config, tmp_path / "out", use_ray=False)
    assert result.manifest["counts"]["accepted"] == 3
    diffusion = next(s for s in result.manifest["stages"] if s["stage"] == "diffusion_image")
    assert diffusion["cache"]["misses"] == 3 * 2 * 2  # records x candidates x panels
    members = {k: v for tar in (tmp_path / "out/data").rglob("*.tar") for k, v in tar_members(tar).items()}
    records = [SampleRecord.from_json_dict(json.loads(v)) for k, v in members.items() if k.endswith(".json")]
    assert len(records) == 3
    for record in records:
        image = np.asarray(Image.open(io.BytesIO(members[f"{record.key}.png"])))
        assert image.shape[0] == 32 and image.shape[1] > 64  # two 32 px panels side by side
        assert record.metadata["image_seed"] in record.metadata["candidate_seeds"]
        assert len(record.metadata["candidate_seeds"]) == 2
        assert record.description.startswith("Left: ") and "left" in record.conversations[0]["value"]
