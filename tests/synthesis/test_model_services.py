"""Shared models: one engine per replica, loaded once and batching calls from several stages and units."""

import json

import pytest

from pipeline.config import ConfigError
from pipeline.model_services import ModelLoadError
from pipeline.record import SampleRecord
from pipeline.synthesis import synthesize
from tests.synthesis.conftest import small_config
from tests.synthesis.test_pipeline import tar_members


def shared_model_config(marker_dir, *extra: str, fail: bool = False):
    return small_config(
        "plugins=[tests.synthesis.plugin_stages]", "categories={SynthColor: {train: 20}, SynthText: {train: 10}}",
        f"models={{tagger: {{backend: test_counter, params: {{marker_dir: '{marker_dir}', fail: {str(fail).lower()}, "
        "seconds_per_batch: 0.3}, "
        "batch_size: 32, batch_wait_ms: 50, resources: {num_cpus: 0.5}}}",
        "stages=[{name: procedural_scene}, {name: test_model_tagger, id: first, params: {model: tagger}}, "
        "{name: rules}, {name: test_model_tagger, id: second, params: {model: tagger}}]", *extra)


def records(root):
    return [SampleRecord.from_json_dict(json.loads(data)) for tar in sorted((root / "data").rglob("*.tar"))
            for name, data in tar_members(tar).items() if name.endswith(".json")]


def test_two_stages_share_one_loaded_model_whose_replica_batches_their_calls(local_ray, tmp_path):
    markers = tmp_path / "markers"
    result = synthesize(shared_model_config(markers), tmp_path / "out")
    assert len(list(markers.glob("load.*"))) == 1  # one replica, loaded once for both stages and every unit
    served = [int(p.name.split(".")[1]) for p in markers.glob("batch.*")]
    assert sum(served) == 2 * 30  # every call of both stages went through the one replica
    out = records(tmp_path / "out")
    assert len(out) == 30 and all(r.metadata["first"] == r.metadata["second"] == f"{r.caption}!" for r in out)
    provenance = out[0].provenance["stages"]["first"]
    assert provenance["tagger_backend"] == "test_counter" and provenance["tagger_revision"] == "unpinned"
    for stage in ("first", "second"):
        row = next(s for s in result.manifest["stages"] if s["stage"] == stage)
        assert row["input"] == 30


def served_batches(tmp_path, across_calls: bool) -> list[int]:
    """Six callers' calls of 5 items, all in flight at once (a long first batch holds the later ones back)."""
    import ray

    from pipeline.model_services import ModelServer

    spec = {"backend": "test_counter", "batch_size": 4, "batch_wait_ms": 500, "batch_across_calls": across_calls,
            "params": {"marker_dir": str(tmp_path), "seconds_per_batch": 0.0}}
    server = ray.remote(ModelServer).options(num_cpus=0.1, max_concurrency=16).remote(
        "tagger", spec, ["tests.synthesis.plugin_stages"])
    try:
        ray.get(server.ready.remote())
        calls = [server.call.remote("tag", [f"u{unit}-{i}" for i in range(5)]) for unit in range(6)]
        answers = ray.get(calls)
        assert [items for items, _ in answers] == [[f"u{unit}-{i}!" for i in range(5)] for unit in range(6)]
        return ray.get(server.stats.remote())["batch_sizes"]
    finally:
        ray.kill(server)


def test_with_batch_across_calls_a_replica_fills_batches_from_concurrent_callers(local_ray, tmp_path):
    # 30 items of six callers gathered within the wait: full batches of 4 that mix callers, and one tail.
    assert served_batches(tmp_path, across_calls=True) == [4] * 7 + [2]


def test_by_default_a_batch_holds_one_call_so_its_rows_never_depend_on_other_units(local_ray, tmp_path):
    # Each call is cut alone, 4 + 1, the same whatever else is in flight: what makes fresh runs byte-identical.
    assert served_batches(tmp_path, across_calls=False) == [4, 1] * 6


def test_in_process_runs_load_the_model_once_per_process(tmp_path):
    markers = tmp_path / "markers"
    result = synthesize(shared_model_config(markers), tmp_path / "out", use_ray=False)
    assert len(list(markers.glob("load.*"))) == 1
    batches = {"first": 6, "second": 6}  # one 0.3 s batch per unit (of 5) and stage
    for row in result.manifest["stages"]:
        if row["stage"] in batches:  # the model's time is the stage's, for `fusion plan` to scale
            assert row["model_seconds"] >= 0.3 * batches[row["stage"]] and row["busy_seconds"] >= row["model_seconds"]
    assert all(r.metadata["first"] == f"{r.caption}!" for r in records(tmp_path / "out"))


def test_a_model_that_cannot_load_stops_the_run_at_once_naming_it(local_ray, tmp_path):
    with pytest.raises(ModelLoadError, match=r"model 'tagger' \(test_counter\) failed to load on its replica: "
                                             r".*no weights at /models/missing"):
        synthesize(shared_model_config(tmp_path / "m", fail=True), tmp_path / "out")
    assert not list((tmp_path / "out").glob("work/*/*_stats.json"))


def test_a_stage_naming_an_unknown_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"stages.1 \('first'\) names model 'tagger'; known: none are configured"):
        small_config("plugins=[tests.synthesis.plugin_stages]",
                     "stages=[{name: procedural_scene}, {name: test_model_tagger, id: first, params: {model: tagger}}]")
