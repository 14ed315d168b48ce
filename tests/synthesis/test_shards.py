"""Unit files (the writer step) and shards assembled from them (first N accepted by position)."""

import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import pipeline.unit_writer as unit_writer
from pipeline.config import DatasetConfig
from pipeline.layout import OutputLayout
from pipeline.planning import SplitTarget, WorkUnit, derive_seed, plan_round, sample_key, split_targets
from pipeline.record import KEY_PATTERN, SampleRecord
from pipeline.shard_writer import plan_shards, select_accepted, write_shard
from pipeline.tables import shard_schema
from pipeline.tar_members import end_of_archive, member_bytes
from pipeline.unit_writer import write_unit

DATASET = DatasetConfig(unit_size=4, shard_size=3)
TARGET = SplitTarget("SynthColor", "train", target=5, max_positions=10)


def unit(index: int, first: int, n: int = 4) -> WorkUnit:
    return WorkUnit("SynthColor", "train", index, first, n, derive_seed(0, "SynthColor", "train"))


def make_records(u: WorkUnit, reject: tuple[int, ...] = ()):
    records = []
    for p in u.positions:
        image = np.full((16, 16, 3), (40 * (p % 6), 10, 200), dtype=np.uint8)
        record = SampleRecord(
            key=u.sample_key(p), category=u.category, split=u.split, seed=u.sample_seed(p),
            caption=f"caption {p}", description=f"description number {p}",
            conversations=[{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": f"c{p}"}],
            scores={"rules/qa_turns": 1.0}, image=image)
        if p in reject:
            record.reject("rules", f"caption_too_long: {20 + p} words > 12")
        records.append(record)
    return records


def tar_members(path):
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


@pytest.fixture
def two_units(tmp_path):
    layout = OutputLayout(tmp_path)
    units = [unit(0, 0), unit(1, 4)]
    write_unit(layout, units[0], make_records(units[0], reject=(1,)), {}, DATASET)
    write_unit(layout, units[1], make_records(units[1], reject=(6,)), {}, DATASET)
    return layout, units


def test_unit_files_index_every_record_and_hold_accepted_members(two_units):
    layout, units = two_units
    stats = json.loads(layout.unit_stats(units[0]).read_text())
    assert (stats["samples"], stats["accepted"], stats["rejected"]) == (4, 3, 1)
    assert stats["reject_reasons"] == {"rules": {"caption_too_long": 1}}
    assert "text/qa_turns" in stats["score_names"] and "rules/qa_turns" in stats["score_names"]
    index = pq.read_table(layout.unit_index(units[0])).to_pylist()
    assert [r["position"] for r in index] == [0, 1, 2, 3]
    assert index[1]["status"] == "rejected" and index[1]["tar_offset"] is None and index[1]["image"]
    names = [name for name, _ in tar_members(layout.unit_tar(units[0]))]
    assert names == [f"{sample_key('SynthColor', 'train', p)}.{ext}" for p in (0, 2, 3) for ext in ("jpg", "json", "txt")]


def test_shards_hold_the_first_n_accepted_by_position_and_keep_the_rest_as_rejects(two_units):
    layout, units = two_units
    selected, surplus = select_accepted(layout, TARGET, units)
    assert [s.position for s in selected] == [0, 2, 3, 4, 5] and surplus == 1  # position 7 is beyond the target
    plans = plan_shards(TARGET, selected, DATASET.shard_size)
    assert [[s.position for s in p.samples] for p in plans] == [[0, 2, 3], [4, 5]]
    score_names = ["rules/qa_turns", "text/caption_words", "text/description_words", "text/qa_turns", "zz/other"]
    stats = [write_shard(layout, p, units, score_names, "jpg") for p in plans]
    assert [s["count"] for s in stats] == [3, 2]

    members = tar_members(layout.shard_tar("SynthColor", "train", 1))
    keys = [name.split(".", 1)[0] for name, _ in members]
    assert keys[::3] == [sample_key("SynthColor", "train", p) for p in (4, 5)]
    assert members[0][0].endswith(".jpg")
    image = Image.open(io.BytesIO(members[0][1]))
    assert image.mode == "RGB" and image.size == (16, 16)
    record = json.loads(members[1][1])
    assert record["status"] == "accepted" and all(KEY_PATTERN.match(k) for k in keys)

    table = pq.read_table(layout.shard_parquet("SynthColor", "train", 0))
    assert table.schema == shard_schema(score_names)  # every shard: the same columns, nulls where absent
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == [sample_key("SynthColor", "train", p) for p in (0, 2, 3)]
    assert rows[0]["score/rules/qa_turns"] == 1.0 and rows[0]["score/zz/other"] is None

    rejects = [pq.read_table(layout.rejects("SynthColor", "train", i)).to_pylist() for i in (0, 1)]
    assert [(r["key"][-2:], r["reject_stage"]) for r in rejects[0]] == [("01", "rules")]
    assert [(r["key"][-2:], r["reject_stage"], r["reject_reason"].split(":")[0]) for r in rejects[1]] == [
        ("06", "rules", "caption_too_long"), ("07", "select", "surplus")]
    assert all(Image.open(io.BytesIO(r["image"])).size == (16, 16) for r in rejects[0] + rejects[1])
    assert json.loads(rejects[1][1]["record_json"])["status"] == "rejected"


def test_assembled_tar_equals_the_tar_of_its_members(two_units):
    layout, units = two_units
    selected, _ = select_accepted(layout, TARGET, units)
    plan = plan_shards(TARGET, selected, 10)[0]
    write_shard(layout, plan, units, [], "jpg")
    members = tar_members(layout.shard_tar("SynthColor", "train", 0))
    expected = bytearray()
    for name, data in members:
        expected += member_bytes(name, data)
    expected += end_of_archive(len(expected))
    assert layout.shard_tar("SynthColor", "train", 0).read_bytes() == bytes(expected)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as reference:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
            reference.addfile(info, io.BytesIO(data))
    assert bytes(expected) == buffer.getvalue()


def test_a_split_with_nothing_accepted_writes_empty_files_with_the_same_schema(tmp_path):
    layout = OutputLayout(tmp_path)
    only = unit(0, 0, 2)
    write_unit(layout, only, make_records(only, reject=(0, 1)), {}, DATASET)
    selected, _ = select_accepted(layout, TARGET, [only])
    stats = write_shard(layout, plan_shards(TARGET, selected, 3)[0], [only], ["a/b"], "jpg")
    assert stats["count"] == 0 and stats["rejected"] == 2
    assert pq.read_table(layout.shard_parquet("SynthColor", "train", 0)).schema == shard_schema(["a/b"])


def test_same_records_give_identical_bytes(tmp_path):
    for name in ("a", "b"):
        layout = OutputLayout(tmp_path / name)
        write_unit(layout, unit(0, 0), make_records(unit(0, 0), reject=(1,)), {}, DATASET)
    for path in ("work/SynthColor/train-00000.tar", "work/SynthColor/train-00000.parquet"):
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()


def test_images_are_encoded_once_in_the_configured_format(tmp_path):
    layout = OutputLayout(tmp_path)
    u = unit(0, 0, 2)
    records = make_records(u)
    write_unit(layout, u, records, {}, DatasetConfig(image_format="png"))
    members = dict(tar_members(layout.unit_tar(u)))
    decoded = np.asarray(Image.open(io.BytesIO(members[f"{u.sample_key(0)}.png"])))
    assert np.array_equal(decoded, records[0].image)  # png is lossless: the generator's pixels exactly


def test_crash_before_stats_leaves_unit_incomplete_and_no_temp_files(tmp_path, monkeypatch):
    layout = OutputLayout(tmp_path)

    def disk_full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(unit_writer, "atomic_write_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_unit(layout, unit(0, 0), make_records(unit(0, 0)), {}, DATASET)
    assert layout.unit_tar(unit(0, 0)).exists() and not layout.unit_is_complete(unit(0, 0))
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_failed_write_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(unit_writer.pq, "write_table", fail)
    with pytest.raises(OSError, match=r"could not write .*train-00000.parquet"):
        write_unit(OutputLayout(tmp_path), unit(0, 0), make_records(unit(0, 0)), {}, DATASET)
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_a_record_without_image_becomes_a_reject_and_records_must_stay_in_order(tmp_path):
    records = make_records(unit(0, 0))
    records[0].image = None
    stats = write_unit(OutputLayout(tmp_path), unit(0, 0), records, {}, DATASET)
    assert stats["reject_reasons"] == {"writer": {"missing_image": 1}}
    shuffled = make_records(unit(0, 0))[::-1]
    with pytest.raises(ValueError, match="keep the unit's records in order"):
        write_unit(OutputLayout(tmp_path), unit(0, 0), shuffled, {}, DATASET)


def test_keys_with_dots_are_refused():
    with pytest.raises(ValueError, match="must match"):
        SampleRecord(key="a.b", category="c", split="train", seed=0)


def test_plans_and_seeds_are_stable_and_independent_of_unit_size():
    targets = split_targets({"SynthCount": {"train": 1050, "test": 0}}, 2.0)
    units = plan_round(targets, {}, 5, 250, 0)
    assert [u.num_samples for u in units] == [250, 250, 250, 250, 50]
    assert units[1].first_position == 250 and units[1].sample_key(257) == "synthcount_train_0000257"
    assert plan_round(targets, {}, 5, 250, 0) == units
    other = plan_round(targets, {}, 5, 100, 0)
    assert other[2].sample_seed(257) == units[1].sample_seed(257)  # the seed follows the position only
    assert plan_round(targets, {}, 6, 250, 0)[0].sample_seed(0) != units[0].sample_seed(0)


def test_json_member_keeps_one_schema_and_round_trips():
    record = make_records(unit(0, 0))[0]
    record.scores["clip/cosine"] = 0.25
    record.metadata = {"scenes": [{"objects": 2}], "extra": "family-specific"}
    record.provenance = {"git_sha": "abc", "stages": {"describe": {"model": "m"}}}
    data = json.loads(json.dumps(record.to_json_dict()))
    assert data["scores"] == [{"name": "clip/cosine", "value": 0.25}, {"name": "rules/qa_turns", "value": 1.0}]
    assert isinstance(data["metadata"], str) and isinstance(data["provenance"], str)
    back = SampleRecord.from_json_dict(data)
    assert (back.scores, back.metadata, back.provenance) == (record.scores, record.metadata, record.provenance)
    with pytest.raises(ValueError, match="is malformed"):
        SampleRecord.from_json_dict({**data, "scores": [{"value": 1.0}]})
