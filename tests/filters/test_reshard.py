"""Filter late: every score is a parquet column, and `fusion reshard --where` writes a new contract-valid
dataset from an existing one with a safe expression language."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.card import validate_card
from pipeline.reshard.where import WhereError, compile_where, evaluate_where
from tests.synthesis.test_pipeline import tar_members

REPO = Path(__file__).resolve().parents[2]
TABLE = pa.table({"key": ["a", "b", "c", "d"], "category": ["X", "Y", "X", "Z"],
                  "score/clip/cos": [0.3, None, 0.1, 0.5], "score/d/s": [1.0, 2.0, 1.5, 0.2]})


@pytest.mark.parametrize(("expression", "expected"), [
    ("clip/cos >= 0.2", [True, False, False, True]),
    ("score/clip/cos >= 0.2", [True, False, False, True]),
    ("clip/cos is null or category == 'X'", [True, True, True, False]),
    ("clip/cos is not null and not (category in ('X', 'Y'))", [False, False, False, True]),
    ("category not in ('X') and d/s + 0.5 * clip/cos > 0.4", [False, False, False, True]),
    ("-d/s < -1.2 or key == \"d\"", [False, True, True, True]),
    ("d/s * 2 >= 3 and true", [False, True, True, False]),
])
def test_where_expressions(expression, expected):
    assert evaluate_where(compile_where(expression, TABLE.schema), TABLE) == expected


@pytest.mark.parametrize(("expression", "message"), [
    ("__import__('os').system('true')", "unexpected character '.'"),
    ("open('x') == 1", "unknown column or score 'open'"),
    ("clip/cos >", "unexpected 'end'"),
    ("clip/cos >= 0.2; rm", "unexpected character ';'"),
    ("d/s", "not true/false"),
    ("category in ('X', 1)", "all be numbers or all strings"),
    ("", "empty"),
])
def test_bad_expressions_fail_naming_the_fault(expression, message):
    with pytest.raises(WhereError, match=re.escape(message)):
        evaluate_where(compile_where(expression, TABLE.schema), TABLE)


def test_every_score_is_a_parquet_column(filtered_dataset):
    manifest = json.loads((filtered_dataset / "manifest.json").read_text())
    schemas = {tuple(pq.read_schema(filtered_dataset / s["parquet"]).names) for s in manifest["shards"]}
    assert len(schemas) == 1
    columns = set(next(iter(schemas)))
    assert {"score/detail_score/ssim_a", "score/text_rules/caption/alnum_ratio", "score/qa_rules/qa_passed"} <= columns


def test_reshard_in_a_fresh_process_writes_a_valid_dataset(filtered_dataset, tmp_path):
    where = "detail_score/ssim_a >= 1.9 and category != 'SynthMultiChoice'"
    out = tmp_path / "strict"
    run = subprocess.run([sys.executable, "-m", "jobs.cli", "reshard", str(filtered_dataset), "--where", where,
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "samples kept" in run.stdout and validate_card(out) == []

    source = json.loads((filtered_dataset / "manifest.json").read_text())
    rows = [r for s in source["shards"] for r in pq.read_table(filtered_dataset / s["parquet"]).to_pylist()]
    expected = sorted(r["key"] for r in rows if r["score/detail_score/ssim_a"] >= 1.9
                      and r["category"] != "SynthMultiChoice")
    assert 0 < len(expected) < len(rows)
    manifest = json.loads((out / "manifest.json").read_text())
    kept = sorted(k for s in manifest["shards"] for k in pq.read_table(out / s["parquet"]).column("key").to_pylist())
    assert kept == expected and manifest["reshard"]["where"] == where
    assert json.loads((out / "sizes.json").read_text()) == {s["path"]: s["count"] for s in manifest["shards"]}

    # Members are copied byte for byte; what the expression removed is a reject of stage `reshard`, and the
    # source's own rejects are still there.
    source_members = {}
    for shard in source["shards"]:
        source_members.update(tar_members(filtered_dataset / shard["path"]))
    for shard in manifest["shards"]:
        for name, data in tar_members(out / shard["path"]).items():
            assert source_members[name] == data
    rejects = [r for p in manifest["rejects"] for r in pq.read_table(out / p).to_pylist()]
    by_stage = {r["reject_stage"] for r in rejects}
    assert "reshard" in by_stage and len(by_stage) > 1
    assert {r["key"] for r in rejects if r["reject_stage"] == "reshard"} == {r["key"] for r in rows} - set(expected)
    assert all(r["image"] for r in rejects if r["reject_stage"] == "reshard")

    import webdataset as wds

    loaded = list(wds.WebDataset([str(out / s["path"]) for s in manifest["shards"]], shardshuffle=False)
                  .decode("pil").to_tuple("jpg", "json"))
    assert sorted(record["key"] for _, record in loaded) == expected


def test_reshard_refuses_a_non_empty_output_and_bad_expressions(filtered_dataset, tmp_path):
    from pipeline.reshard import reshard

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        reshard(filtered_dataset, tmp_path / "full", "text/qa_turns >= 1")
    with pytest.raises(WhereError, match="scores of this dataset: .*detail_score/ssim_a"):
        reshard(filtered_dataset, tmp_path / "new", "clip >= 1")
