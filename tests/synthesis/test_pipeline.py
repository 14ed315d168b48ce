import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import ConfigError
from pipeline.fileio import sha256_file
from pipeline.record import KEY_PATTERN, SampleRecord
from pipeline.synthesis import synthesize
from tests.synthesis.conftest import FAMILIES, small_config


def data_files(root: Path) -> dict[str, bytes]:
    """Every shard file of a dataset (tar, parquet, stats, rejects), by path."""
    files = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_file() and relative.startswith(("data/", "rejects/")):
            files[relative] = path.read_bytes()
    return files


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {member.name: tar.extractfile(member).read() for member in tar}


def test_output_follows_the_shard_contract(synth_output):
    root = synth_output
    manifest = json.loads((root / "manifest.json").read_text())
    # 7 x (3 train + 1 test) units and shards of 5 samples
    assert manifest["complete"] and manifest["units"] == {"planned": 28, "complete": 28, "failed": 0, "rounds": 1}
    assert len(manifest["shards"]) == 28
    assert manifest["counts"]["accepted"] == 7 * 16
    sizes = json.loads((root / "sizes.json").read_text())
    tars = sorted(root.glob("data/*/*.tar"))
    assert sorted(sizes) == [t.relative_to(root).as_posix() for t in tars]
    assert (root / "config.yaml").is_file() and (root / "README.md").is_file() and not (root / "failed_units.json").exists()
    assert not list(root.rglob("*.tmp-*"))

    all_keys = []
    for tar_path in tars:
        stem = tar_path.with_suffix("")
        assert Path(f"{stem}_stats.json").is_file() and Path(f"{stem}.parquet").is_file()
        members = tar_members(tar_path)
        keys = sorted({name.split(".", 1)[0] for name in members})
        assert all(KEY_PATTERN.match(k) for k in keys)
        assert sorted(members) == sorted(f"{k}.{ext}" for k in keys for ext in ("jpg", "json", "txt"))
        assert sizes[tar_path.relative_to(root).as_posix()] == len(keys)
        category_sizes = json.loads((tar_path.parent / "sizes.json").read_text())
        assert category_sizes[tar_path.name] == len(keys)
        for key in keys:
            record = json.loads(members[f"{key}.json"])
            assert record["conversations"][0]["value"].startswith("<image>\n")
            assert record["category"] == tar_path.parent.name and record["status"] == "accepted"
            provenance = json.loads(record["provenance"])
            assert "git_sha" in provenance and set(provenance["stages"]) == {"procedural_scene", "rules"}
            assert record["scores"]
        all_keys += keys
    assert len(all_keys) == len(set(all_keys)) == manifest["counts"]["accepted"]

    for shard in manifest["shards"]:
        assert sha256_file(root / shard["path"]) == shard["sha256"]
        assert sha256_file(root / shard["parquet"]) == shard["parquet_sha256"]
        assert (root / shard["rejects"]).is_file()
    assert {c for c in manifest["counts"]["categories"]} == set(FAMILIES)
    assert [s["stage"] for s in manifest["stages"]] == ["procedural_scene", "rules", "writer"]


def test_shards_load_with_plain_webdataset(synth_output):
    import webdataset as wds

    urls = [str(p) for p in sorted(synth_output.glob("data/*/train-*.tar"))]
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil").to_tuple("jpg", "json", "txt")
    samples = list(dataset)
    assert len(samples) == 7 * 12
    image, record, text = samples[0]
    assert image.mode == "RGB" and image.size[1] == 64
    assert record["conversations"][1]["from"] == "gpt" and text


def test_shards_load_with_hugging_face_datasets(synth_output, tmp_path):
    from datasets import load_dataset

    data_files = {"train": sorted(str(p) for p in synth_output.glob("data/*/train-*.tar")),
                  "test": sorted(str(p) for p in synth_output.glob("data/*/test-*.tar"))}
    dataset = load_dataset("webdataset", data_files=data_files, cache_dir=str(tmp_path))
    assert dataset["train"].num_rows == 7 * 12 and dataset["test"].num_rows == 7 * 4
    row = dataset["test"][0]
    assert row["jpg"].mode == "RGB"
    assert row["json"]["conversations"][0]["from"] == "human"
    categories = {r["category"] for r in dataset["train"]["json"]}
    assert categories == set(FAMILIES)


def test_same_config_gives_identical_files_with_ray_and_without(synth_output, local_ray, tmp_path, monkeypatch):
    reference = data_files(synth_output)  # on Ray, shards written by the driver's threads (small data)
    monkeypatch.setattr("pipeline.synthesis.SHARD_TASKS_MIN_BYTES", 0)  # shards written by Ray tasks
    synthesize(small_config(), tmp_path / "ray")
    assert data_files(tmp_path / "ray") == reference
    synthesize(small_config(), tmp_path / "local", use_ray=False)
    assert data_files(tmp_path / "local") == reference


def test_a_different_seed_gives_different_data(synth_output, tmp_path):
    synthesize(small_config("seed=1", "categories={SynthColor: {train: 5}}"), tmp_path / "other", use_ray=False)
    other = tar_members(tmp_path / "other/data/SynthColor/train-00000.tar")
    reference = tar_members(synth_output / "data/SynthColor/train-00000.tar")
    assert other.keys() == reference.keys()  # keys name positions, content follows the seed
    assert all(other[k] != reference[k] for k in other if k.endswith(".jpg"))


def test_rejected_samples_are_recorded_with_stage_and_reason(local_ray, tmp_path):
    result = synthesize(small_config("stages.1.params.max_caption_words=6"), tmp_path / "strict")
    counts = result.manifest["counts"]
    assert counts["rejected"] > 0
    rules = next(s for s in result.manifest["stages"] if s["stage"] == "rules")
    assert rules["rejected"] == counts["rejected"] and set(rules["reasons"]) == {"caption_too_long"}
    rejects = [row for path in sorted((tmp_path / "strict/rejects").rglob("*.parquet"))
               for row in pq.read_table(path).to_pylist()]
    assert len(rejects) == counts["rejected"]
    # Top-up rounds replaced rejected samples until each split had its target or used its attempts; a
    # shortfall is reported with its main reasons, never hidden.
    assert result.manifest["units"]["rounds"] > 1
    for category, splits in counts["categories"].items():
        for split, tally in splits.items():
            assert tally["accepted"] + tally["shortfall"] == tally["target"]
            if tally["shortfall"]:
                assert tally["attempted"] == 2 * tally["target"], (category, split)
                assert counts["shortfalls"][f"{category}/{split}"]["main_reject_reasons"] == {
                    "rules: caption_too_long": tally["rejected"]}
    assert counts["shortfalls"] and counts["accepted"] < 7 * 16
    kept = {name.split(".", 1)[0] for tar in (tmp_path / "strict/data").rglob("*.tar") for name in tar_members(tar)}
    for row in rejects:
        assert row["reject_stage"] == "rules" and row["reject_reason"].startswith("caption_too_long")
        assert len(json.loads(row["record_json"])["caption"].split()) > 6
        assert row["key"] not in kept


def test_rerun_skips_complete_units_and_redoes_missing_ones(synth_output, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(synth_output, out)
    (out / "work/SynthCount/train-00001_stats.json").unlink()  # as if killed before the stats were written
    (out / "work/SynthText/test-00000.tar").write_bytes(b"half a tar")
    (out / "work/SynthText/test-00000_stats.json").unlink()
    (out / "data/SynthSpatial/train-00002_stats.json").unlink()  # killed while assembling shards
    (out / "data/SynthColor/train-00000.tar.tmp-host-123-abcd").write_bytes(b"partial")
    result = synthesize(small_config(), out, use_ray=False)
    assert result.units_run == 2 and result.units_skipped == 26
    assert data_files(out) == data_files(synth_output)


def test_output_of_another_config_is_not_mixed(synth_output, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(synth_output, out)
    with pytest.raises(ConfigError, match=r"different config \(fields differ: seed\)"):
        synthesize(small_config("seed=5"), out, use_ray=False)
    with pytest.raises(ConfigError, match=r"fields differ: stages.1.params.max_caption_words"):
        synthesize(small_config("stages.1.params.max_caption_words=9"), out, use_ray=False)
    # Placement, faults and card text do not change the data, so they may differ on resume.
    synthesize(small_config("ray.num_cpus=1", "dataset.pretty_name=Renamed", "dataset.license=mit",
                            "faults.unit_retries=0", "stages.0.resources.num_cpus=0.5"), out, use_ray=False)
    assert yaml.safe_load((out / "config.yaml").read_text())["ray"]["num_cpus"] == 1
    assert "Renamed" in (out / "README.md").read_text() and "license: mit" in (out / "README.md").read_text()


def test_secrets_in_the_environment_never_reach_the_output(tmp_path, monkeypatch, capsys):
    secrets = {"HF_TOKEN": "hf_secretvalue123", "RAY_AUTH_TOKEN": "raysecretvalue456",
               "AWS_SECRET_ACCESS_KEY": "awssecretvalue789"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    synthesize(small_config("categories={SynthText: {train: 5, test: 5}}"), tmp_path / "out", use_ray=False)
    printed = capsys.readouterr()
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not any(value.encode() in content for value in secrets.values()), path
    assert not any(value in printed.out + printed.err for value in secrets.values())


def test_stages_from_a_plugin_module_plug_in_by_config(local_ray, tmp_path):
    """A model-backed filter and a plain stage from outside the project run on Ray without pipeline changes."""
    config = small_config(
        "plugins=[tests.synthesis.plugin_stages]",
        "categories={SynthColor: {train: 15}, SynthConvShort: {train: 10}}",
        "stages=[{name: procedural_scene}, {name: rules}, {name: test_length_model, params: {min_words: 2}},"
        " {name: test_tagger}]",
    )
    result = synthesize(config, tmp_path / "plugged")
    stages = result.manifest["stages"]
    assert [s["stage"] for s in stages] == ["procedural_scene", "rules", "test_length_model", "test_tagger", "writer"]
    # Captions have several words; one-word short answers are rejected by the plugged-in filter.
    model_stage = stages[2]
    assert model_stage["rejected"] > 0 and set(model_stage["reasons"]) == {"answer_too_short"}
    records = [json.loads(data) for tar in sorted((tmp_path / "plugged/data").rglob("*.tar"))
               for name, data in tar_members(tar).items() if name.endswith(".json")]
    records = [SampleRecord.from_json_dict(r) for r in records]
    assert records and all(r.metadata["tagged_by"].startswith("test_tagger/") for r in records)
    # One actor (concurrency defaults to 1) loaded the "model" once and scored every unit.
    loaders = {(r.scores["test_length_model/loader_pid"], r.scores["test_length_model/loader_instance"])
               for r in records}
    assert len(loaders) == 1


def test_two_runs_cannot_write_one_folder_at_once(tmp_path):
    import fcntl

    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running synthesis holds it
        with pytest.raises(RuntimeError, match="another run is writing to"):
            synthesize(small_config("categories={SynthColor: {train: 2}}"), out, use_ray=False)
    assert not (out / "data").exists()
