"""The engine under model-backed stages: stage ids, lossless images, faults as data, retries, failed units,
the error budget, GPU pools and placement groups. Test stages stand in for models (plugin_stages.py)."""

import hashlib
import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from generators.procedural import ProceduralParams, generate_sample
from jobs.cli import main
from pipeline.config import ConfigError
from pipeline.executors import writer_joins_task
from pipeline.record import SampleRecord
from pipeline.synthesis import RunFailed, synthesize
from pipeline.unit_work import plan_segments
from tests.synthesis.conftest import small_config
from tests.synthesis.test_kill_and_resume import wait_for
from tests.synthesis.test_pipeline import data_files, tar_members

PLUGINS = "plugins=[tests.synthesis.plugin_stages]"


def stages(*entries: str) -> str:
    return "stages=[{name: procedural_scene}, " + ", ".join(entries) + "]"


def shard_records(root):
    return [SampleRecord.from_json_dict(json.loads(data)) for tar in sorted((root / "data").rglob("*.tar"))
            for name, data in tar_members(tar).items() if name.endswith(".json")]


def all_rejects(root):
    return [row for path in sorted((root / "rejects").rglob("*.parquet")) for row in pq.read_table(path).to_pylist()]


def test_one_kind_twice_under_two_ids(local_ray, tmp_path):
    config = small_config(PLUGINS, "categories={SynthConvShort: {train: 6}}", stages(
        "{name: rules, id: rules_caption, params: {max_caption_words: 12}}",
        "{name: rules, id: rules_turns, params: {max_qa_turns: 8}}"))
    synthesize(config, tmp_path / "out")
    columns = pq.read_table(tmp_path / "out/data/SynthConvShort/train-00000.parquet").column_names
    assert {"score/rules_caption/qa_turns", "score/rules_turns/qa_turns"} <= set(columns)
    card = (tmp_path / "out/README.md").read_text()
    assert "| `rules_caption` | `rules` | filter |" in card and "| `rules_turns` | `rules` | filter |" in card
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert [s["stage"] for s in manifest["stages"]] == ["procedural_scene", "rules_caption", "rules_turns", "writer"]


def test_duplicate_ids_and_colliding_categories_are_config_errors():
    with pytest.raises(ConfigError, match=r"stages.1 and stages.2 both have id 'rules'"):
        small_config(stages("{name: rules}", "{name: rules}"))
    with pytest.raises(ConfigError, match=r"'SynthColor' and 'synthcolor' differ only in case"):
        small_config("categories={SynthColor: {train: 1}, synthcolor: {train: 1}}")
    with pytest.raises(ConfigError, match=r"must be 1-60 letters, digits and underscores"):
        small_config("categories={Synth-Color: {train: 1}}")


def test_scoring_stages_see_the_generators_exact_pixels_and_the_tar_holds_one_image(local_ray, tmp_path):
    config = small_config(PLUGINS, "categories={SynthCount: {train: 4}, SynthContrastShort: {train: 3}}",
                          stages("{name: test_pixel_probe, resources: {concurrency: 1}}"))
    synthesize(config, tmp_path / "out")
    records = shard_records(tmp_path / "out")
    assert len(records) == 7
    for record in records:
        image = generate_sample(record.category, record.seed, ProceduralParams(image_size=64)).image
        assert record.metadata["pixel_sha256"] == hashlib.sha256(np.asarray(image).tobytes()).hexdigest()
    for tar in (tmp_path / "out/data").rglob("*.tar"):
        members = tar_members(tar)
        for key in {name.split(".", 1)[0] for name in members}:
            assert sorted(n for n in members if n.startswith(key + ".")) == [f"{key}.{e}" for e in ("jpg", "json", "txt")]
            assert Image.open(io.BytesIO(members[f"{key}.jpg"])).format == "JPEG"


def test_a_stage_raising_on_some_samples_rejects_just_those(local_ray, tmp_path):
    config = small_config(PLUGINS, "categories={SynthColor: {train: 20}}", "dataset.max_attempts_factor=1",
                          stages("{name: test_raise_every, params: {every: 7}, resources: {batch_size: 4}}"))
    result = synthesize(config, tmp_path / "out")
    rejects = all_rejects(tmp_path / "out")
    positions = sorted(int(r["key"].rsplit("_", 1)[1]) for r in rejects)
    assert positions == [0, 7, 14]
    assert all(r["reject_stage"] == "test_raise_every" and
               r["reject_reason"] == f"error:ValueError: cannot handle position {int(r['key'][-7:])}" for r in rejects)
    kept = shard_records(tmp_path / "out")
    assert len(kept) == 17 and all(r.scores["test_raise_every/seen"] == 1.0 for r in kept)
    stage = next(s for s in result.manifest["stages"] if s["stage"] == "test_raise_every")
    assert (stage["input"], stage["rejected"], stage["errors"]) == (20, 3, 3)


def test_too_many_errors_stop_the_run_with_a_clear_message(local_ray, tmp_path):
    config = small_config(PLUGINS, "categories={SynthColor: {train: 40}}", "faults.min_samples_before_abort=10",
                          stages("{name: test_raise_every, params: {every: 1}}"))
    with pytest.raises(RunFailed, match=r"stopping early: \d+ of the \d+ samples so far ended in an error .*"
                                        r"cannot handle position"):
        synthesize(config, tmp_path / "out")


def test_a_worker_killed_once_per_unit_is_retried_and_the_data_is_unchanged(local_ray, tmp_path):
    def config(unit_ids: str):
        return small_config(PLUGINS, "categories={SynthCount: {train: 12}, SynthText: {test: 5}}", stages(
            f"{{name: test_kill_actor, params: {{marker_dir: '{tmp_path / 'markers'}', unit_ids: {unit_ids}}}}}",
            "{name: rules}"))

    synthesize(config("[]"), tmp_path / "killed")  # every unit's first attempt kills the actor
    assert len(list((tmp_path / "markers").iterdir())) == 2 * 4  # 4 units, each tried twice
    synthesize(config("[none]"), tmp_path / "calm")
    assert data_files(tmp_path / "killed") == data_files(tmp_path / "calm")


def test_an_actor_killed_by_one_unit_charges_only_that_unit(local_ray, tmp_path):
    # One actor holds a unit and has the next queued: each death of the actor re-sends both, but only the unit it
    # was running uses up its retries (1 here): it is started exactly twice and fails; the queued ones land.
    markers = tmp_path / "markers"
    config = small_config(PLUGINS, "categories={SynthCount: {train: 15}}", "faults.unit_retries=1", stages(
        f"{{name: test_kill_actor, params: {{marker_dir: '{markers}', unit_ids: [SynthCount/train-00000], "
        "times: 0}, resources: {concurrency: 1}}", "{name: rules}"))
    with pytest.raises(RunFailed, match="SynthCount/train-00000"):
        synthesize(config, tmp_path / "out")
    assert len(list(markers.glob("SynthCount_train-00000.*"))) == 2
    failed = json.loads((tmp_path / "out" / "failed_units.json").read_text())
    assert [f["unit"] for f in failed] == ["SynthCount/train-00000"]
    assert "'test_kill_actor' on unit SynthCount/train-00000 died 2 time(s)" in failed[0]["error"]
    written = sorted(p.name for p in (tmp_path / "out" / "work" / "SynthCount").glob("*_stats.json"))
    assert len(written) == 2 and not any("00000" in name for name in written)


def test_a_unit_that_always_fails_is_listed_and_a_rerun_completes_it(local_ray, tmp_path, capsys):
    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / "broken").touch()
    overrides = [PLUGINS, "categories={SynthColor: {train: 15}, SynthCount: {train: 5}}", stages(
        f"{{name: test_crash_unit, params: {{marker_dir: '{markers}', unit_ids: [SynthColor/train-00001]}}}}",
        "{name: rules}")]
    out = tmp_path / "out"
    args = ["synth", "--config", "demo", "--out", str(out), *[a for o in overrides for a in ("--set", o)],
            "--set", "dataset.unit_size=5", "--set", "dataset.shard_size=5", "--set", "ray.progress=false"]
    assert main(args) == 1
    error = capsys.readouterr().err
    assert "1 unit(s) failed and are listed in" in error and "SynthColor/train-00001" in error
    failed = json.loads((out / "failed_units.json").read_text())
    assert [f["unit"] for f in failed] == ["SynthColor/train-00001"] and "died" in failed[0]["error"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and manifest["units"]["failed"] == 1
    assert {s["category"] for s in manifest["shards"]} == {"SynthCount"}  # the unaffected split is finished
    assert len(list((out / "work/SynthColor").glob("*_stats.json"))) == 2

    (markers / "broken").unlink()
    assert main(args) == 0
    assert "1 units run, 3 already complete" in capsys.readouterr().out
    assert not (out / "failed_units.json").exists()
    reference = tmp_path / "reference"
    synthesize(small_config(*overrides[:2], stages(
        f"{{name: test_crash_unit, params: {{marker_dir: '{markers}', unit_ids: []}}}}", "{name: rules}")), reference)
    assert data_files(out) == data_files(reference)


def test_two_actor_pools_of_different_sizes_and_resources_run_the_plan(local_ray, tmp_path):
    config = small_config(PLUGINS, "categories={SynthColor: {train: 20}, SynthSpatial: {train: 20}}",
                          "dataset.unit_size=4", stages(
                              "{name: test_sleep, id: slow, params: {seconds_per_sample: 0.05}, "
                              "resources: {concurrency: 2, num_cpus: 0.25}}",
                              "{name: test_placement_probe, resources: {num_gpus: 0.5, num_cpus: 0.25}}"))
    synthesize(config, tmp_path / "out")
    records = shard_records(tmp_path / "out")
    assert len(records) == 40
    assert len({r.metadata["slow_pid"] for r in records}) == 2  # a pool of two actors shared the slow units
    placements = {json.dumps(r.metadata["placement"], sort_keys=True) for r in records}
    assert len(placements) == 1  # one actor: its model loaded once
    placement = json.loads(placements.pop())
    assert len(placement["gpu_ids"]) == 1 and placement["bundles"] is None


def test_units_are_finished_and_written_while_a_model_stage_still_works(local_ray, tmp_path):
    # Ray Data's downstream-capacity backpressure once held the writer's task back behind the model actor: most
    # units then went through the stages after the model only once the model had finished every unit.
    config = small_config(PLUGINS, "categories={SynthColor: {train: 40}}", "dataset.unit_size=4", stages(
        "{name: test_sleep, id: model, params: {seconds_per_sample: 0.05}, resources: {concurrency: 1}}",
        "{name: test_clock, id: after}"))
    synthesize(config, tmp_path / "out")
    records = shard_records(tmp_path / "out")
    model_done = max(r.metadata["model_done_at"] for r in records)
    units_after = {r.metadata["after_at"] for r in records}
    assert len(units_after) == 10
    assert sum(t < model_done for t in units_after) >= 7  # held back: 3 of 10


def test_tensor_parallel_stages_reserve_a_placement_group_of_gpu_bundles(local_ray, tmp_path):
    config = small_config(PLUGINS, "categories={SynthColor: {train: 4}}", stages(
        "{name: test_placement_probe, resources: {tensor_parallel_size: 2, num_cpus: 0.5}}"))
    synthesize(config, tmp_path / "out")
    placement = shard_records(tmp_path / "out")[0].metadata["placement"]
    assert placement["bundles"] == [{"GPU": 1.0, "CPU": 0.5}, {"GPU": 1.0}]
    assert placement["gpu_ids"] == []  # the GPUs are the bundles', for the model's parallel workers
    import ray
    from ray.util import placement_group_table

    # The reservation ends with the run; a leftover group would hold its GPUs and CPU for ever.
    assert all(g["state"] == "REMOVED" for g in placement_group_table().values())
    assert wait_for(lambda: ray.available_resources().get("GPU") == 2.0, timeout=30)  # resource views lag a little


def test_families_with_different_scores_and_metadata_round_trip_through_datasets(local_ray, tmp_path):
    from datasets import load_dataset

    config = small_config(PLUGINS, "categories={SynthColor: {train: 6}, SynthSpatial: {train: 6}}",
                          stages("{name: test_family_scores, params: {categories: [SynthSpatial]}}", "{name: rules}"))
    synthesize(config, tmp_path / "out")
    files = sorted(str(p) for p in (tmp_path / "out/data").rglob("train-*.tar"))
    assert "SynthColor" in files[0]  # the first samples lack the family-specific score and metadata
    dataset = load_dataset("webdataset", data_files={"train": files}, cache_dir=str(tmp_path / "hf"))["train"]
    loaded = {row["__key__"]: SampleRecord.from_json_dict(row["json"]) for row in dataset}
    written = {r.key: r for r in shard_records(tmp_path / "out")}
    assert loaded.keys() == written.keys() and len(loaded) == 12
    for key, record in written.items():
        assert loaded[key].scores == record.scores and loaded[key].metadata == record.metadata
    assert sum("test_family_scores/special" in r.scores for r in loaded.values()) == 6


def test_resuming_with_other_versions_is_refused_unless_allowed(synth_output, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(synth_output, out)
    info = json.loads((out / "work/run.json").read_text())
    info["packages"]["numpy"] = "0.0.1"
    info["stages"]["rules"] = "rules 0"
    (out / "work/run.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError, match=r"made with other versions \(packages.numpy: 0.0.1 -> .*stages.rules: "
                                          r"rules 0 -> rules 1\).*--allow-version-change"):
        synthesize(small_config(), out, use_ray=False)
    result = synthesize(small_config(), out, use_ray=False, allow_version_change=True)
    assert result.units_run == 0


def test_run_wide_dedup_keeps_the_smallest_key_whatever_the_order_and_tops_up(local_ray, tmp_path):
    def config(unit_size: int):
        return small_config(PLUGINS, "categories={SynthColor: {train: 30}, SynthCount: {train: 20}}",
                            f"dataset.unit_size={unit_size}", "dataset.max_attempts_factor=4",
                            stages("{name: test_caption_dedup, id: dedup, params: {last_words: 2}}", "{name: rules}"))

    from tests.synthesis.plugin_stages import caption_signature

    result = synthesize(config(5), tmp_path / "a")
    records = shard_records(tmp_path / "a")
    captions = [caption_signature(r.caption, 2) for r in records]
    assert len(captions) == len(set(captions)) == 50  # no duplicate left, and the targets met by top-up
    assert result.manifest["units"]["rounds"] > 1
    rejects = [r for r in all_rejects(tmp_path / "a") if r["reject_stage"] == "dedup"]
    assert rejects
    removed = {r["key"] for r in rejects}
    kept = {r.key: caption_signature(r.caption, 2) for r in records}
    surplus = {r["key"]: caption_signature(json.loads(r["record_json"])["caption"], 2)
               for r in all_rejects(tmp_path / "a") if r["reject_stage"] == "select"}
    for row in rejects:
        kept_key = row["reject_reason"].rsplit(" ", 1)[1]
        assert kept_key < row["key"] and kept_key not in removed  # the smallest key of the group is kept
        signature = caption_signature(json.loads(row["record_json"])["caption"], 2)
        assert {**kept, **surplus}[kept_key] == signature
    dedup = next(s for s in result.manifest["stages"] if s["stage"] == "dedup")
    assert dedup["rejected"] == len(rejects) and set(dedup["reasons"]) == {"duplicate_caption"}

    # Other unit sizes finish in another order and plan other units; the samples follow their positions,
    # so the decision and the data are the same.
    synthesize(config(7), tmp_path / "b", use_ray=False)
    assert data_files(tmp_path / "a") == data_files(tmp_path / "b")


def test_progress_is_counted_per_stage_in_samples(tmp_path):
    from pipeline.executors import LocalExecutor
    from pipeline.planning import plan_round, split_targets
    from pipeline.synthesis import run_context

    config = small_config(PLUGINS, "categories={SynthColor: {train: 12}}", stages(
        "{name: test_reject_every, params: {every: 3}, resources: {batch_size: 2}}", "{name: rules}"))
    units = plan_round(split_targets({"SynthColor": {"train": 12}}, 2.0), {}, 0, 5, 0)
    executor = LocalExecutor(config, tmp_path, run_context(config), use_cache=True)
    outcomes = list(executor.run(units))
    state = executor.snapshot()
    rejected = sum(o.stats["rejected"] for o in outcomes)
    assert state["records"] == {"procedural_scene": 12, "test_reject_every": 12, "rules": 12, "writer": 12}
    assert state["rejected"]["test_reject_every"] == rejected > 0 and state["rejected"]["rules"] == 0
    assert state["locations"] == {u.unit_id: "rules" for u in units}  # the last stage each unit entered


def test_a_drivers_ray_runs_reuse_one_board_cleared_for_each_run(local_ray, tmp_path):
    import ray

    from pipeline.executors import RayExecutor
    from pipeline.planning import plan_round, split_targets
    from pipeline.synthesis import run_context

    config = small_config("categories={SynthColor: {train: 6}}")
    units = plan_round(split_targets({"SynthColor": {"train": 6}}, 2.0), {}, 0, 3, 0)
    boards = []
    for attempt in range(2):
        executor = RayExecutor(config, tmp_path / str(attempt), run_context(config), use_cache=True)
        assert all(o.ok for o in executor.run(units))
        state = executor.snapshot()
        assert state["records"] == {"procedural_scene": 6, "rules": 6, "writer": 6}  # this run's alone
        assert state["locations"] == {u.unit_id: "rules" for u in units}
        boards.append(executor.board)
        executor.close()
    assert boards[0]._actor_id == boards[1]._actor_id  # no new actor process per run
    # a board that died meanwhile is replaced by a new one
    ray.kill(boards[1])
    executor = RayExecutor(config, tmp_path / "2", run_context(config), use_cache=True)
    assert executor.board._actor_id != boards[1]._actor_id
    assert executor.snapshot()["records"] == {}
    executor.close()


def test_the_index_refuses_a_key_found_in_two_shards(synth_output, tmp_path):
    from pipeline.indexing import check_unique_keys, load_manifest
    from pipeline.layout import OutputLayout

    out = tmp_path / "copy"
    shutil.copytree(synth_output, out)
    shards = load_manifest(out)["shards"]
    first, second = shards[0], shards[1]
    shutil.copy(out / first["parquet"], out / second["parquet"])  # as if two shards held the same samples
    with pytest.raises(ValueError, match=rf"sample key '.*' is in both {first['path']} and {second['path']}"):
        check_unique_keys(OutputLayout(out), shards)


def test_the_writer_joins_the_last_cpu_task_but_never_a_model_actor():
    def segments(*entries):
        return plan_segments(small_config(PLUGINS, stages(*entries)).stages)

    cpu_only = segments("{name: rules}")
    assert [s.kind for s in cpu_only] == ["cpu"] and writer_joins_task(cpu_only[-1])
    after_model = segments("{name: rules}", "{name: test_sleep, id: model, resources: {concurrency: 1}}")
    assert [s.kind for s in after_model] == ["cpu", "model"] and not writer_joins_task(after_model[-1])
    # A CPU task asking less than the writer's CPU would run the writer on less than it needs.
    light = plan_segments(small_config("stages=[{name: procedural_scene, resources: {num_cpus: 0.5}}, "
                                       "{name: rules, resources: {num_cpus: 0.5}}]").stages)
    assert light[-1].num_cpus == 0.5 and not writer_joins_task(light[-1])
