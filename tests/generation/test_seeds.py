"""Seed captions: every source kind, clear errors, and a per-position choice that keeps splits apart."""

import json

import pytest

from generators.seeds.assignment import pool_index
from generators.seeds.sources import builtin_topics, load_pool


def test_every_source_kind_reads_the_same_captions(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    captions = ["a red ball on a wooden table", "two cats asleep on a blue sofa", "a lighthouse at dusk"]
    (tmp_path / "c.txt").write_text("# a comment\n" + "\n".join(captions) + "\n\n")
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"caption": c, "id": i}) for i, c in enumerate(captions)))
    pq.write_table(pa.table({"text": captions}), tmp_path / "c.parquet")
    datasets.Dataset.from_dict({"caption": captions}).save_to_disk(str(tmp_path / "hf"))
    pools = [load_pool("text", str(tmp_path / "c.txt"), "caption", "train", ()),
             load_pool("jsonl", str(tmp_path / "c.jsonl"), "caption", "train", ()),
             load_pool("parquet", str(tmp_path / "c.parquet"), "text", "train", ()),
             load_pool("hf_dataset", str(tmp_path / "hf"), "caption", "train", ())]
    assert all(pool == (tuple(captions), pools[0][1]) for pool in pools)
    with pytest.raises(ValueError, match=r"c\.jsonl:1: no string field 'text'"):
        load_pool("jsonl", str(tmp_path / "c.jsonl"), "text", "train", ())
    with pytest.raises(ValueError, match="no column 'caption'"):
        load_pool("parquet", str(tmp_path / "c.parquet"), "caption", "train", ())
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_pool("text", str(tmp_path / "missing.txt"), "caption", "train", ())


def test_builtin_topic_lists_ship_with_the_package():
    assert len(builtin_topics()) >= 5
    captions, _ = load_pool("builtin", None, "caption", "train", ("city",))
    assert len(captions) >= 20 and all(len(c.split()) >= 3 for c in captions)
    with pytest.raises(ValueError, match="unknown built-in seed topics"):
        load_pool("builtin", None, "caption", "train", ("no_such_topic",))


def test_positions_map_onto_the_pool_as_a_bijection_and_splits_share_no_seed():
    size = 50
    train = [pool_index(size, "digest", 0, "SynthColor", "train", p) for p in range(30)]
    test = [pool_index(size, "digest", 0, "SynthColor", "test", p) for p in range(20)]
    indices = [i for i, _ in train + test]
    assert sorted(indices) == list(range(size))  # 30 + 20 positions use the pool exactly once
    assert all(cycle == 0 for _, cycle in train + test)
    assert pool_index(size, "digest", 0, "SynthColor", "train", 50) == (train[0][0], 1)  # then it wraps
    other = [pool_index(size, "digest", 0, "SynthCount", "train", p)[0] for p in range(30)]
    assert other != [i for i, _ in train]  # each category walks its own permutation
