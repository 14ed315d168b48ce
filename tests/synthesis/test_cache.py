"""The model-call cache: replayed calls make resume exact even for a model whose output is random per call."""

import shutil
import subprocess
import sys
import tempfile

import numpy as np

from jobs.cli import main
from pipeline.cache import CallCache, call_key
from pipeline.synthesis import synthesize
from tests.synthesis.conftest import SMALL_OVERRIDES, small_config
from tests.synthesis.processes import kill_processes_using
from tests.synthesis.test_kill_and_resume import REPO, kill_everything, wait_for
from tests.synthesis.test_pipeline import data_files


def random_model_overrides(calls_dir) -> list[str]:
    return ["plugins=[tests.synthesis.plugin_stages]",
            "stages=[{name: procedural_scene}, {name: test_random_model, id: noise, "
            f"params: {{calls_dir: '{calls_dir}'}}}}, {{name: rules}}]"]


def cache_stats(manifest):
    return next(s for s in manifest["stages"] if s["stage"] == "noise")["cache"]


def test_call_cache_replays_values_and_keys_follow_every_input(tmp_path):
    path = tmp_path / "unit.msgpack"
    fingerprint = {"model": "m", "revision": "r1", "template": "abc", "sampling": {"temperature": 0.7}}
    calls = []

    def compute(requests):
        calls.append(len(requests))
        return [{"text": f"out-{r['prompt']}", "array": np.arange(3, dtype=np.int16) * r["prompt"]} for r in requests]

    cache = CallCache(path, fingerprint)
    first = cache.map([(1, {"prompt": 1}), (2, {"prompt": 2})], compute)
    cache.save()
    replay = CallCache(path, fingerprint)
    again = replay.map([(2, {"prompt": 2}), (1, {"prompt": 1}), (3, {"prompt": 3})], compute)
    assert calls == [2, 1] and (replay.hits, replay.misses) == (2, 1)
    assert again[0]["text"] == first[1]["text"] and np.array_equal(again[1]["array"], first[0]["array"])
    base = call_key(fingerprint, 1, {"prompt": 1})
    assert call_key({**fingerprint, "revision": "r2"}, 1, {"prompt": 1}) != base
    assert call_key(fingerprint, 2, {"prompt": 1}) != base and call_key(fingerprint, 1, {"prompt": 9}) != base
    image = np.zeros((2, 2, 3), np.uint8)
    assert call_key(fingerprint, 1, {"image": image}) != call_key(fingerprint, 1, {"image": image + 1})


def test_an_unchanged_config_rerun_from_its_cache_makes_no_model_call(local_ray, tmp_path):
    calls = tmp_path / "calls"
    config = small_config(*random_model_overrides(calls), "categories={SynthColor: {train: 8}, SynthText: {test: 4}}")
    first = synthesize(config, tmp_path / "out")
    assert cache_stats(first.manifest) == {"hits": 0, "misses": 12} and len(list(calls.iterdir())) == 12
    shutil.copytree(first.out_dir, tmp_path / "first")
    # Everything but the cache is gone: the second run is the same run, replayed.
    for name in ("data", "work", "rejects", "manifest.json"):
        path = tmp_path / "out" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    second = synthesize(config, tmp_path / "out")
    assert cache_stats(second.manifest) == {"hits": 12, "misses": 0}
    assert len(list(calls.iterdir())) == 12  # no call was made again
    assert data_files(second.out_dir) == data_files(tmp_path / "first")

    assert main(["cache", "clear", str(tmp_path / "out"), "--stage", "noise"]) == 0
    assert not list((tmp_path / "out/cache/noise").rglob("*.msgpack"))


def test_no_cache_neither_replays_nor_stores(local_ray, tmp_path):
    calls = tmp_path / "calls"
    config = small_config(*random_model_overrides(calls), "categories={SynthColor: {train: 5}}")
    result = synthesize(config, tmp_path / "out", use_cache=False)
    assert cache_stats(result.manifest) == {"hits": 0, "misses": 5}
    assert not (tmp_path / "out/cache").exists()


def test_a_random_model_killed_mid_run_and_resumed_equals_its_replay(tmp_path):
    calls = tmp_path / "calls"
    out = tmp_path / "killed"
    overrides = [*SMALL_OVERRIDES, *random_model_overrides(calls), "categories={SynthColor: {train: 120}}"]
    command = [sys.executable, "-m", "jobs.cli", "synth", "--config", "demo", "--out", str(out),
               *[a for o in overrides for a in ("--set", o)], "--set", "ray.num_cpus=2"]
    log = tmp_path / "runs.log"
    ray_dir = tempfile.mkdtemp(prefix="rayc")
    try:
        with open(log, "a") as handle:
            first = subprocess.Popen([*command, "--set", f"ray.temp_dir={ray_dir}"], cwd=REPO,
                                     start_new_session=True, stdout=handle, stderr=subprocess.STDOUT)
        assert wait_for(lambda: len(list(out.glob("work/*/*_stats.json"))) >= 3, timeout=120), log.read_text()[-3000:]
        kill_everything(first, ray_dir)
        assert len(list(out.glob("work/*/*_stats.json"))) < 24
        with open(log, "a") as handle:
            second = subprocess.run([*command, "--set", f"ray.temp_dir={ray_dir}"], cwd=REPO, stdout=handle,
                                    stderr=subprocess.STDOUT, timeout=300)
        assert second.returncode == 0, log.read_text()[-3000:]
    finally:
        kill_processes_using(ray_dir)
        shutil.rmtree(ray_dir, ignore_errors=True)
    made = len(list(calls.iterdir()))
    assert made >= 120  # calls of units killed before their cache was saved were made again

    replay = tmp_path / "replay"
    replay.mkdir()
    shutil.copytree(out / "cache", replay / "cache")
    result = synthesize(small_config(*random_model_overrides(calls), "categories={SynthColor: {train: 120}}"),
                        replay, use_ray=False)
    assert cache_stats(result.manifest)["misses"] == 0 and len(list(calls.iterdir())) == made
    assert data_files(replay) == data_files(out)
