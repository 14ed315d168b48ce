"""Run-wide dedup through the engine: the same representative is kept whatever the unit size and completion
order, top-up rounds replace what dedup removed, and a run killed with SIGKILL and resumed equals an
uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.synthesis import synthesize
from tests.filters.conftest import filtered_config
from tests.synthesis.test_kill_and_resume import wait_for
from tests.synthesis.test_pipeline import data_files

REPO = Path(__file__).resolve().parents[2]
PAUSED = ["plugins=[tests.filters.plugin_stages]", "dataset.unit_size=4",
          "categories={SynthColor: {train: 24}, SynthCount: {train: 8}}",
          "stages=[{name: procedural_scene}, {name: test_pause, params: {seconds_per_sample: 0.1}},"
          " {name: dedup_minhash, params: {source: caption, threshold: 0.7, shingle_words: 1}},"
          " {name: dedup_image_hash}]"]


def dedup_rejects(root):
    import pyarrow.parquet as pq

    rows = [r for p in sorted((root / "rejects").rglob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return {r["key"]: r["reject_reason"] for r in rows if r["reject_stage"].startswith("dedup")}


def test_the_same_representative_whatever_the_unit_size_and_order(tmp_path):
    synthesize(filtered_config("dataset.unit_size=3"), tmp_path / "a", use_ray=False)
    synthesize(filtered_config("dataset.unit_size=7"), tmp_path / "b", use_ray=False)
    assert data_files(tmp_path / "a") == data_files(tmp_path / "b")
    removed = dedup_rejects(tmp_path / "a")
    assert removed
    for key, reason in removed.items():
        kept = reason.rsplit(" ", 1)[1]
        assert kept < key and kept not in removed
    manifest = json.loads((tmp_path / "a/manifest.json").read_text())
    assert not manifest["counts"]["shortfalls"] and manifest["units"]["rounds"] > 1


def test_dedup_after_sigkill_and_resume_equals_an_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    synthesize(filtered_config(*PAUSED), reference, use_ray=False)
    assert dedup_rejects(reference)
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "jobs.cli", "synth", "--no-ray", "--config", "demo", "--out", str(out),
               *[a for o in ["dataset.unit_size=5", "dataset.shard_size=5", "ray.progress=false",
                             "dataset.max_attempts_factor=3", *PAUSED] for a in ("--set", o)]]
    log = open(tmp_path / "log", "ab")
    first = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: len(list(out.glob("work/*/*_stats.json"))) >= 2, timeout=120)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not (out / "manifest.json").exists()
    second = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=240)
    assert second.returncode == 0, (tmp_path / "log").read_text()[-2000:]
    assert data_files(out) == data_files(reference)
