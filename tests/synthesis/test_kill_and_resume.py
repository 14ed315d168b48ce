"""A run killed with SIGKILL at any moment and started again equals an uninterrupted run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.planning import plan_round, split_targets
from pipeline.synthesis import synthesize
from tests.synthesis.conftest import SMALL_OVERRIDES, small_config
from tests.synthesis.processes import kill_processes_using
from tests.synthesis.test_pipeline import data_files

REPO = Path(__file__).resolve().parents[2]
# Enough units that a kill lands mid-run: 7 families plus 60 more units of one family; a filter rejecting about
# a third of the samples makes top-up rounds, which must resume exactly too.
KILL_OVERRIDES = [*SMALL_OVERRIDES, "categories.SynthColor.train=300", "plugins=[tests.synthesis.plugin_stages]",
                  "stages=[{name: procedural_scene}, {name: test_reject_every, params: {every: 3}}, {name: rules}]"]
_CONFIG = small_config(*KILL_OVERRIDES)
PLANNED_UNITS = len(plan_round(split_targets({c: v.split_sizes() for c, v in _CONFIG.categories.items()}, 2.0), {},
                               _CONFIG.seed, _CONFIG.dataset.unit_size, 0))


def start_synth(out: Path, ray_dir: str, log: Path) -> subprocess.Popen:
    """`fusion synth` in its own process group; its output goes to a file (a full pipe would stall it)."""
    overrides = [arg for o in KILL_OVERRIDES for arg in ("--set", o)]
    command = [sys.executable, "-m", "jobs.cli", "synth", "--config", "demo", "--out", str(out), *overrides,
               "--set", f"ray.temp_dir={ray_dir}", "--set", "ray.num_cpus=2"]
    with open(log, "a") as handle:
        return subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=handle, stderr=subprocess.STDOUT)


def kill_everything(process: subprocess.Popen, ray_dir: str) -> None:
    """SIGKILL the run's whole process group, and the Ray daemons it started (found by their session dir)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    kill_processes_using(ray_dir)


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def completed_units(out: Path) -> int:
    return len(list(out.glob("work/*/*_stats.json")))


def test_sigkill_at_several_points_then_resume_equals_uninterrupted(tmp_path):
    reference = tmp_path / "uninterrupted"
    synthesize(small_config(*KILL_OVERRIDES), reference, use_ray=False)
    out = tmp_path / "killed"
    log = tmp_path / "runs.log"
    ray_dir = tempfile.mkdtemp(prefix="rayk")
    try:
        # 1) killed while Ray is still starting; 2) killed after the first shards landed; 3) run to the end.
        first = start_synth(out, ray_dir, log)
        assert wait_for(lambda: (out / "config.yaml").exists(), timeout=60)
        kill_everything(first, ray_dir)
        assert completed_units(out) < PLANNED_UNITS

        second = start_synth(out, ray_dir, log)
        assert wait_for(lambda: completed_units(out) >= 3, timeout=120), log.read_text()[-3000:]
        kill_everything(second, ray_dir)
        killed_at = completed_units(out)
        assert killed_at < PLANNED_UNITS, "the run finished before it could be killed; make the test dataset larger"

        third = start_synth(out, ray_dir, log)
        assert third.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        kill_processes_using(ray_dir)
        shutil.rmtree(ray_dir, ignore_errors=True)

    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["units"]["rounds"] > 1 and not manifest["counts"]["shortfalls"]
    assert manifest["counts"]["accepted"] == 7 * 16 + 288  # exactly the targets, whatever the filter took
    assert completed_units(out) == completed_units(reference) == manifest["units"]["planned"] > PLANNED_UNITS
    assert data_files(out) == data_files(reference)
    assert not list(out.rglob("*.tmp-*"))
