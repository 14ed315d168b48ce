"""`fusion plan` and the preflight: what a config runs, what it costs, and whether a cluster can hold it."""

import pytest

from jobs.cli import main
from pipeline.projection import projection
from pipeline.resources import ClusterResources, preflight_problems
from pipeline.synthesis import synthesize
from tests.synthesis.conftest import small_config

SLEEP = 0.02


def sleepy_config(*extra: str):
    return small_config("plugins=[tests.synthesis.plugin_stages]", "categories={SynthColor: {train: 6}, SynthText: {train: 6}}",
                        "stages=[{name: procedural_scene}, {name: test_sleep, id: describe, "
                        f"params: {{seconds_per_sample: {SLEEP}}}, resources: {{concurrency: {{min: 1, max: 3}}}}}}, "
                        "{name: test_reject_every, params: {every: 3}}]", "dataset.max_attempts_factor=3", *extra)


def test_the_projection_scales_measured_stage_times(local_ray, tmp_path):
    config = sleepy_config()
    manifest = synthesize(config, tmp_path / "calibration").manifest
    measured = next(s for s in manifest["stages"] if s["stage"] == "describe")
    assert measured["busy_seconds"] >= SLEEP * measured["input"]  # sleeping cannot take less than its time
    p = projection(manifest, config, target=10_000, cpu_slots=2)
    rows = {r["stage"]: r for r in p["rows"]}
    attempted = sum(s["attempted"] for c in manifest["counts"]["categories"].values() for s in c.values())
    assert p["generated"] == pytest.approx(10_000 * attempted / manifest["counts"]["accepted"])
    describe = rows["describe"]
    assert describe["inputs"] == pytest.approx(p["generated"])  # every generated sample reaches it
    assert describe["seconds_per_input"] == pytest.approx(measured["busy_seconds"] / measured["input"])
    assert describe["busy_hours"] == pytest.approx(describe["inputs"] * describe["seconds_per_input"] / 3600)
    assert describe["busy_hours"] >= p["generated"] * SLEEP / 3600 and describe["workers"] == 3
    # About a third are rejected after the sleeping stage, so about 1.5 times the target is generated.
    assert 1.2 < p["generated"] / 10_000 < 2.5


def test_plan_prints_units_pools_and_a_projection_from_a_calibration_run(local_ray, tmp_path, capsys):
    path = tmp_path / "sleepy.yaml"
    import yaml

    path.write_text(yaml.safe_dump(sleepy_config().model_dump(mode="json")))
    assert main(["plan", "--config", str(path), "--target", "5000", "--calibration-samples", "4"]) == 0
    out = capsys.readouterr().out
    assert "plan of 'demo': 12 accepted samples wanted (train 12) in 2 categories" in out
    assert "describe" in out and "actor pool (model)" in out and "1-3 actors" in out
    assert "projection for 5,000 accepted samples, from a calibration run of 4 samples per category and split" in out
    assert "GPU-hours; wall clock about" in out


def test_preflight_names_the_stage_and_what_is_missing():
    gpu = small_config("plugins=[tests.synthesis.plugin_stages]", "stages=[{name: procedural_scene}, "
                       "{name: test_sleep, id: vlm, resources: {tensor_parallel_size: 4, accelerator_type: H100}}]")
    cpu_only = ClusterResources({"CPU": 8.0}, [{"CPU": 8.0}])
    problems = preflight_problems(gpu.stages, cpu_only)
    assert len(problems) == 1 and problems[0].startswith("stage 'vlm' asks for 1 actor(s) with CPU=1, GPU=4")
    assert "(tensor_parallel_size=4): GPU 4 needed, the cluster has 8 CPUs and 0 GPUs" in problems[0]

    split_nodes = ClusterResources({"CPU": 16.0, "GPU": 4.0, "accelerator_type:H100": 2.0},
                                   [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 2.0}])
    assert preflight_problems(gpu.stages, split_nodes) == [
        "stage 'vlm' needs 4 GPUs on one node (tensor_parallel_size); no node has that many "
        "(16 CPUs and 4 GPUs on 2 node(s) (accelerator types: H100))"]
    one_node = ClusterResources({"CPU": 16.0, "GPU": 4.0}, [{"CPU": 16.0, "GPU": 4.0}])
    assert "H100 0.001 needed" in preflight_problems(gpu.stages, one_node)[0]

    two_pools = small_config("plugins=[tests.synthesis.plugin_stages]", "stages=[{name: procedural_scene}, "
                             "{name: test_sleep, id: a, resources: {num_gpus: 1, concurrency: 2}}, "
                             "{name: test_sleep, id: b, resources: {num_gpus: 0.5, concurrency: 2}}]")
    fits = ClusterResources({"CPU": 8.0, "GPU": 3.0}, [{"CPU": 8.0, "GPU": 3.0}])
    assert preflight_problems(two_pools.stages, fits) == []
    tight = ClusterResources({"CPU": 8.0, "GPU": 2.0}, [{"CPU": 8.0, "GPU": 2.0}])
    assert preflight_problems(two_pools.stages, tight) == [
        "the stages' pools run at once and need 3 GPU together (a: 2, b: 1); the cluster has 8 CPUs and 2 GPUs "
        "on 1 node(s)"]
