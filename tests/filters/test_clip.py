"""CLIP stages with the tiny open_clip model through the real code path: a `models:` entry loaded from a
local folder, one loaded CLIP serving the image-score and dedup stages, calls through the model-call cache,
best-of-N scores per candidate and the choice among them."""

import json

import numpy as np
import pytest

from filters.clip_backend import OpenClipBackend, OpenClipParams
from tests.marks import SEVERAL_RAY_RUNS
from tests.synthesis.conftest import small_config
from tests.synthesis.test_engine import shard_records


def clip_config(clip_dir, *overrides):
    return small_config(
        "plugins=[tests.filters.plugin_stages]", "categories={SynthColor: {train: 6}, SynthText: {train: 4}}",
        f"models={{clip: {{backend: open_clip, params: {{model: 'local-dir:{clip_dir}'}}, "
        "resources: {num_gpus: 1}, batch_size: 8}}",
        "stages=[{name: procedural_scene}, {name: test_candidates},"
        " {name: clip_score, params: {model: clip}}, {name: detail_score},"
        " {name: image_total}, {name: choose_image, params: {score: image_total/total}},"
        " {name: dedup_embedding, id: dedup_clip, params: {model: clip, source: image, threshold: 0.999}}]",
        *overrides)


def test_backend_embeds_unit_vectors_and_names_its_weights(tiny_synthesis_models):
    params = OpenClipParams(model=f"local-dir:{tiny_synthesis_models['clip']}")
    backend = OpenClipBackend(params)
    images = backend.embed_images([np.zeros((40, 60, 3), np.uint8), np.full((32, 32, 3), 200, np.uint8)])
    texts = backend.embed_texts(["a red circle", "two blue stars"])
    assert [v.shape for v in images + texts] == [(32,)] * 4
    assert np.allclose([np.linalg.norm(v) for v in images + texts], 1.0, atol=1e-5)
    identity = OpenClipBackend.identity(params)
    assert identity["backend"] == "open_clip" and identity["revision"].startswith("local-")
    with pytest.raises(ValueError, match="open_clip_config.json not found"):
        OpenClipParams(model="local-dir:/nowhere")


@SEVERAL_RAY_RUNS
def test_clip_stages_share_one_model_on_ray_and_replay_from_the_cache(local_ray, tiny_synthesis_models, tmp_path):
    from pipeline.synthesis import synthesize

    config = clip_config(tiny_synthesis_models["clip"])
    result = synthesize(config, tmp_path / "out")
    records = shard_records(tmp_path / "out")
    assert len(records) == 10
    for record in records:
        cosines = [record.scores[f"clip_score/candidate_{i}/clip_cosine"] for i in range(3)]
        totals = [record.scores[f"image_total/candidate_{i}/total"] for i in range(3)]
        assert all(-1 <= c <= 1 for c in cosines)
        for i in range(3):
            assert totals[i] == pytest.approx(cosines[i] + 0.5 * record.scores[f"detail_score/candidate_{i}/ssim_a"])
        best = int(record.scores["choose_image/chosen_index"])
        assert best == int(np.argmax(totals)) and record.scores["clip_score/clip_cosine"] == cosines[best]
        stages = record.provenance["stages"]
        assert stages["clip_score"]["clip_backend"] == stages["dedup_clip"]["clip_backend"] == "open_clip"
        assert stages["clip_score"]["clip_revision"] == stages["dedup_clip"]["clip_revision"]
    table = {s["stage"]: s for s in result.manifest["stages"]}
    # One call per candidate of every sample tried (top-ups included), one image embedding per sample for dedup.
    assert table["clip_score"]["cache"]["misses"] == 3 * table["clip_score"]["input"] >= 30
    assert table["dedup_clip"]["cache"]["misses"] == table["dedup_clip"]["input"]
    assert table["clip_score"]["gpu_seconds"] > 0  # the model's replica reserves a (declared) GPU
    card = (tmp_path / "out/README.md").read_text()
    assert "raw cosine" in card and "## Scores and filters" in card

    # A fresh run into a copy replays every CLIP call from the cache and gives the same data.
    import shutil

    shutil.copytree(tmp_path / "out", tmp_path / "again", ignore=shutil.ignore_patterns("work", "data", "rejects"))
    again = synthesize(config, tmp_path / "again", use_ray=False)
    table = {s["stage"]: s for s in again.manifest["stages"]}
    assert table["clip_score"]["cache"]["misses"] == 0 and table["clip_score"]["cache"]["hits"] >= 30
    assert [r.to_json_dict()["scores"] for r in shard_records(tmp_path / "again")] == \
        [r.to_json_dict()["scores"] for r in records]


def test_a_low_clip_threshold_rejects_with_the_raw_cosine(tiny_synthesis_models, tmp_path):
    from pipeline.synthesis import synthesize

    config = clip_config(tiny_synthesis_models["clip"], "stages.2.params.min_cosine=0.99",
                         "dataset.max_attempts_factor=1")
    result = synthesize(config, tmp_path / "out", use_ray=False)
    assert result.manifest["counts"]["accepted"] == 0
    import pyarrow.parquet as pq

    rows = [r for p in (tmp_path / "out/rejects").rglob("*.parquet") for r in pq.read_table(p).to_pylist()]
    assert {r["reject_stage"] for r in rows} == {"clip_score"}
    assert all(r["reject_reason"].startswith("low_clip: raw cosine ") for r in rows)
    assert all(json.loads(r["record_json"])["scores"] for r in rows)
