"""The tiny models through the real transformers and diffusers backends inside the Ray pipeline, end to end:
contract-valid shards with model and template provenance, replay from the cache with zero model calls, and
exact top-up (identical across runs and after a SIGKILL and resume)."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.config import save_config
from pipeline.record import IMAGE_TOKEN, SampleRecord
from pipeline.synthesis import synthesize
from tests.generation.conftest import tiny_models_config
from tests.marks import SEVERAL_RAY_RUNS
from tests.synthesis.test_pipeline import data_files, tar_members

REPO = Path(__file__).resolve().parents[2]
MODEL_STAGES = ("llm_description", "diffusion_image", "llm_qa")


def stage_cache(manifest):
    return {s["stage"]: s["cache"] for s in manifest["stages"] if s["stage"] in MODEL_STAGES}


@SEVERAL_RAY_RUNS
def test_tiny_models_run_end_to_end_on_ray_into_contract_valid_shards(local_ray, tiny_synthesis_models, tmp_path):
    config = tiny_models_config(tiny_synthesis_models,
                                "categories={SynthConvShort: {train: 4, test: 2}, SynthConvLong: {train: 2}}")
    out = tmp_path / "out"
    result = synthesize(config, out)
    manifest = result.manifest
    assert manifest["complete"] and not manifest["counts"]["shortfalls"] and manifest["counts"]["accepted"] == 8
    assert set(manifest["config"]["models"]) == {"llm", "diffusion"}

    records = []
    for tar in sorted((out / "data").rglob("*.tar")):
        members = tar_members(tar)
        keys = sorted({name.split(".", 1)[0] for name in members})
        assert sorted(members) == sorted(f"{k}.{ext}" for k in keys for ext in ("png", "json", "txt"))
        for key in keys:
            record = SampleRecord.from_json_dict(json.loads(members[f"{key}.json"]))
            image = np.asarray(Image.open(io.BytesIO(members[f"{key}.png"])))
            assert image.shape == (32, 32, 3) and record.status == "accepted"
            assert record.category == tar.parent.name and record.seed_caption and record.description
            records.append(record)
    assert len(records) == 8
    for record in records:
        turns = record.conversations
        assert turns[0]["from"] == "human" and turns[0]["value"].startswith(f"{IMAGE_TOKEN}\n")
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert len(record.metadata["qa"]) == len(turns) // 2
        stages = record.provenance["stages"]
        for stage, model in (("llm_description", "llm"), ("llm_qa", "llm"), ("diffusion_image", "diffusion")):
            assert stages[stage][f"{model}_model"] == str(tiny_synthesis_models[model])
            assert stages[stage][f"{model}_revision"].startswith("local-")
        templates = record.provenance["prompt_templates"]
        assert templates["llm_description"].startswith(f"description/{record.category}.v1@")
        assert templates["llm_qa"].startswith(f"qa/{record.category}.v1@")
    model_stages = {s["stage"]: s for s in manifest["stages"] if s["stage"] in MODEL_STAGES}
    assert all(s["cache"]["misses"] > 0 and s["cache"]["hits"] == 0 for s in model_stages.values())

    # Resubmitted with everything but the cache gone: every model call replayed, none made.
    shutil.copytree(out, tmp_path / "first")
    for name in ("data", "work", "rejects", "manifest.json"):
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    again = synthesize(config, out)
    for stage, cache in stage_cache(again.manifest).items():
        assert cache["misses"] == 0 and cache["hits"] == model_stages[stage]["cache"]["misses"], stage
    assert data_files(out) == data_files(tmp_path / "first")


# A filter rejecting about a third of the samples forces top-up rounds on a model-backed config.
TOP_UP = ["plugins=[tests.synthesis.plugin_stages]", "categories={SynthConvShort: {train: 12}}", "dataset.unit_size=6",
          "dataset.max_attempts_factor=4.0", "stages.5={name: test_reject_every, params: {every: 3}}"]


def top_up_config(models):
    return tiny_models_config(models, *TOP_UP)


def completed_units(out: Path) -> int:
    return len(list(out.glob("work/*/*_stats.json")))


@SEVERAL_RAY_RUNS
def test_top_up_yields_exactly_n_identically_across_runs_and_after_kill_and_resume(local_ray, tiny_synthesis_models,
                                                                                   tmp_path):
    reference = tmp_path / "reference"
    first = synthesize(top_up_config(tiny_synthesis_models), reference).manifest
    counts = first["counts"]["categories"]["SynthConvShort"]["train"]
    assert counts["accepted"] == 12 and not first["counts"]["shortfalls"] and first["units"]["rounds"] > 1
    assert counts["main_reject_reasons"].get("test_reject_every: unlucky", 0) > 0

    # The same config killed (SIGKILL, in its own process, no Ray) after some units, then resumed: the cache
    # replays the calls of finished units and the rest are computed again, to the same bytes as the Ray run.
    config_file = tmp_path / "config.yaml"
    save_config(top_up_config(tiny_synthesis_models), config_file)
    out = tmp_path / "killed"
    log = open(tmp_path / "killed.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "jobs.cli", "synth", "--config", str(config_file), "--out",
                                str(out), "--no-ray"], cwd=REPO, start_new_session=True, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 240
        while completed_units(out) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "the run finished before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert 2 <= completed_units(out) < first["units"]["planned"]
    resumed = synthesize(top_up_config(tiny_synthesis_models), out, use_ray=False).manifest
    assert resumed["counts"]["accepted"] == 12
    assert data_files(out) == data_files(reference)
