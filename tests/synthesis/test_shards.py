import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

import pipeline.shards as shards
from pipeline.images import encode_jpeg
from pipeline.record import KEY_PATTERN, SampleRecord
from pipeline.shards import OutputLayout, write_unit
from pipeline.units import WorkUnit, derive_seed, plan_units

UNIT = WorkUnit(category="SynthColor", split="train", index=3, num_samples=4, seed=99)


def make_records(unit=UNIT):
    records = []
    for i in range(unit.num_samples):
        image = Image.new("RGB", (16, 16), (40 * i, 10, 200))
        records.append(SampleRecord(
            key=unit.sample_key(i), category=unit.category, split=unit.split, seed=unit.sample_seed(i),
            caption=f"caption {i}", description=f"description number {i}",
            conversations=[{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": f"c{i}"}],
            scores={"rules/qa_turns": 1.0}, image=encode_jpeg(image, 90),
        ))
    records[2].reject("rules", "caption_too_long: 20 words > 12")
    return records


def test_shard_members_keys_and_index_files(tmp_path):
    layout = OutputLayout(tmp_path)
    stats = write_unit(layout, UNIT, make_records())
    tar_path = layout.shard_tar(UNIT)
    assert tar_path == tmp_path / "data/SynthColor/train-00003.tar"
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        members = {m.name: tar.extractfile(m).read() for m in tar}
    keys = sorted({n.split(".", 1)[0] for n in names})
    assert keys == [UNIT.sample_key(i) for i in (0, 1, 3)]
    assert all(KEY_PATTERN.match(k) for k in keys)
    for key in keys:  # every sample has exactly the same members
        assert sorted(n for n in names if n.split(".", 1)[0] == key) == [f"{key}.jpg", f"{key}.json", f"{key}.txt"]
        record = json.loads(members[f"{key}.json"])
        assert record["key"] == key and record["status"] == "accepted" and "image" not in record
        assert members[f"{key}.txt"].decode() == record["description"]
        assert Image.open(io.BytesIO(members[f"{key}.jpg"])).mode == "RGB"

    table = pq.read_table(layout.shard_parquet(UNIT)).to_pylist()
    assert [row["key"] for row in table] == keys
    assert table[0]["score/rules/qa_turns"] == 1.0
    assert json.loads(table[0]["conversations"])[1]["value"] == "c0"

    rejects = pq.read_table(layout.rejects(UNIT)).to_pylist()
    assert [(r["key"], r["reject_stage"]) for r in rejects] == [(UNIT.sample_key(2), "rules")]
    assert rejects[0]["reject_reason"].startswith("caption_too_long")

    assert stats["count"] == 3 and stats["rejected"] == 1
    assert stats["reject_reasons"] == {"rules": {"caption_too_long": 1}}
    assert json.loads(layout.shard_stats(UNIT).read_text()) == stats
    assert layout.is_complete(UNIT)


def test_same_records_give_identical_bytes(tmp_path):
    a, b = OutputLayout(tmp_path / "a"), OutputLayout(tmp_path / "b")
    write_unit(a, UNIT, make_records())
    write_unit(b, UNIT, make_records())
    for path in (a.shard_tar(UNIT), a.shard_parquet(UNIT), a.rejects(UNIT)):
        assert path.read_bytes() == (b.root / path.relative_to(a.root)).read_bytes()


def test_crash_before_stats_leaves_unit_incomplete_and_no_temp_files(tmp_path, monkeypatch):
    layout = OutputLayout(tmp_path)

    def disk_full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards, "atomic_write_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_unit(layout, UNIT, make_records())
    assert layout.shard_tar(UNIT).exists()  # the data files were written first ...
    assert not layout.is_complete(UNIT)  # ... but without stats the unit counts as not done
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_failed_write_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    layout = OutputLayout(tmp_path)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards.pq, "write_table", fail)
    with pytest.raises(OSError, match=r"could not write .*train-00003.parquet"):
        write_unit(layout, UNIT, make_records())
    assert not list(tmp_path.rglob("*.tmp-*")) and not layout.is_complete(UNIT)


def test_records_must_belong_to_their_unit(tmp_path):
    records = make_records()
    records[0].image = None
    with pytest.raises(ValueError, match="has no image"):
        write_unit(OutputLayout(tmp_path), UNIT, records)
    records = make_records()
    records[1].key = records[0].key
    with pytest.raises(ValueError, match="duplicate sample keys"):
        write_unit(OutputLayout(tmp_path), UNIT, records)


def test_keys_with_dots_are_refused():
    with pytest.raises(ValueError, match="must match"):
        SampleRecord(key="a.b", category="c", split="train", seed=0)


def test_units_and_seeds_are_stable():
    units = plan_units(5, "SynthCount", "train", 1050, 250)
    assert [u.num_samples for u in units] == [250, 250, 250, 250, 50]
    assert len({u.seed for u in units}) == 5
    assert units[0].seed == derive_seed(5, "SynthCount", "train", 0)
    assert plan_units(5, "SynthCount", "train", 1050, 250) == units
    assert plan_units(6, "SynthCount", "train", 1050, 250)[0].seed != units[0].seed
    assert units[1].sample_key(7) == "synthcount_train_00001_00007"


def test_json_member_keeps_one_schema_and_round_trips():
    record = make_records()[0]
    record.scores["clip/cosine"] = 0.25
    record.metadata = {"scenes": [{"objects": 2}], "extra": "family-specific"}
    record.provenance = {"git_sha": "abc", "stages": {"describe": {"model": "m"}}}
    data = json.loads(shards.canonical_json(record.to_json_dict()))
    assert data["scores"] == [{"name": "clip/cosine", "value": 0.25}, {"name": "rules/qa_turns", "value": 1.0}]
    assert isinstance(data["metadata"], str) and isinstance(data["provenance"], str)
    back = SampleRecord.from_json_dict(data)
    assert (back.scores, back.metadata, back.provenance) == (record.scores, record.metadata, record.provenance)
    with pytest.raises(ValueError, match="is malformed"):
        SampleRecord.from_json_dict({**data, "scores": [{"value": 1.0}]})
