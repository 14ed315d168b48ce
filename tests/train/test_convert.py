"""`fusion convert`: LLaVA-style JSON + images and a Hugging Face dataset folder become shards the loader reads,
with manifest and sizes; text-only entries get their own category; broken entries are skipped and counted."""

from __future__ import annotations

import json
import tarfile

import pytest
from PIL import Image

from jobs.cli import main
from train.config import DataSection, SourceSpec
from train.loader import ShardLoader
from train.sources import resolve_sources


@pytest.fixture
def llava_source(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(images / "sub" / "red.jpg")
    Image.new("RGBA", (30, 30), (10, 200, 10, 255)).save(images / "green.png")  # re-encoded as JPEG RGB
    entries = [
        {"id": "GCC_train_001.x", "image": "sub/red.jpg",
         "conversations": [{"from": "human", "value": "<image>\nDescribe the image."},
                           {"from": "gpt", "value": "A red rectangle."}]},
        {"id": "g2", "image": "green.png",
         "conversations": [{"from": "human", "value": "What colour is it?\n<image>"}, {"from": "gpt", "value": "Green."}]},
        {"id": "missing", "image": "nowhere.jpg",
         "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello."}]},
        {"id": "orca-1", "conversations": [{"from": "human", "value": "What is 2 + 2?"}, {"from": "gpt", "value": "4."}]},
        {"id": "broken"},
    ]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(entries))
    return path, images


def test_llava_json_converts_to_the_shard_contract(llava_source, tmp_path, capsys, tiny_model):
    path, images = llava_source
    out = tmp_path / "converted"
    code = main(["convert", "llava", "--input", str(path), "--images", str(images), "--out", str(out),
                 "--name", "LLaVAPretrain", "--shard-size", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "converted 3 samples of LLaVAPretrain" in printed and "unreadable_image" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    categories = {s["category"] for s in manifest["shards"]}
    assert categories == {"LLaVAPretrain", "LLaVAPretrain_text"}
    sizes = json.loads((out / "sizes.json").read_text())
    assert sum(sizes.values()) == 3 and all((out / p).is_file() for p in sizes)
    for shard in manifest["shards"]:
        with tarfile.open(out / shard["path"]) as tar:
            names = tar.getnames()
        keys = {n.split(".", 1)[0] for n in names}
        members = {frozenset(n.split(".", 1)[1] for n in names if n.startswith(k + ".")) for k in keys}
        assert len(members) == 1  # every sample of a tar has the same members
        expected = {"jpg", "json", "txt"} if shard["category"] == "LLaVAPretrain" else {"json", "txt"}
        assert members == {frozenset(expected)}
        assert all(k.replace("_", "").isalnum() and k == k.lower() for k in keys)

    sources = resolve_sources([SourceSpec(path=str(out), categories=["LLaVAPretrain", "LLaVAPretrain_text"])], seed=0)
    # a one-sample shuffle buffer yields the first pass in order: exactly the three converted samples
    loader = ShardLoader(sources, tiny_model.sequence_builder, DataSection(num_workers=0, shuffle_buffer=1,
                                                                            shuffle_initial=1),
                         seed=0, micro_batch=3, batches_per_epoch=1, max_length=512)
    (batch,) = list(loader.epoch(0))
    assert len(set(batch.keys)) == 3 and sorted(batch.batch.has_image.tolist()) == [False, True, True]
    assert batch.position.counts.get("bad_json", 0) == 0


def test_a_huggingface_image_text_folder_converts(tmp_path, capsys):
    import datasets

    images = [Image.new("RGB", (20, 20), (i * 60, 0, 0)) for i in range(3)]
    table = datasets.Dataset.from_dict({"image": images, "caption": [f"shade {i}" for i in range(3)]},
                                       features=datasets.Features({"image": datasets.Image(),
                                                                   "caption": datasets.Value("string")}))
    table.save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "converted"
    assert main(["convert", "hf", "--input", str(tmp_path / "hf"), "--out", str(out), "--name", "Shades"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["count"] for s in manifest["shards"]] == [3]
    with tarfile.open(out / manifest["shards"][0]["path"]) as tar:
        record = json.loads(tar.extractfile(sorted(n for n in tar.getnames() if n.endswith(".json"))[0]).read())
    assert record["conversations"][0]["value"].startswith("<image>\n")
    assert record["conversations"][1]["value"] == "shade 0"
    # a second source merges into the same folder as its own category
    assert main(["convert", "hf", "--input", str(tmp_path / "hf"), "--out", str(out), "--name", "Again"]) == 0
    assert {s["category"] for s in json.loads((out / "manifest.json").read_text())["shards"]} == {"Shades", "Again"}
    assert main(["convert", "hf", "--input", str(tmp_path / "hf"), "--out", str(out), "--name", "bad.name"]) == 2
    assert "letters, digits and underscores" in capsys.readouterr().err
