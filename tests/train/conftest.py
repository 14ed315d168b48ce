"""Fixtures for the trainer tests: one small synthesized dataset per session (built without Ray, in a second),
and helpers to make shards with exact contents."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

FAMILIES = ("SynthColor", "SynthMultiChoice", "SynthConvShort")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """Three families, train and test splits, two or more shards each (the last one short)."""
    from pipeline.config import load_config
    from pipeline.synthesis import synthesize

    out = tmp_path_factory.mktemp("train_data") / "dataset"
    overrides = ["dataset.unit_size=6", "ray.progress=false",
                 "categories={" + ", ".join(f"{f}: {{train: 14, test: 5}}" for f in FAMILIES) + "}"]
    synthesize(load_config("demo", overrides), out, use_ray=False)
    return out


def conversation(index: int, image: bool = True) -> list[dict[str, str]]:
    prefix = "<image>\n" if image else ""
    return [{"from": "human", "value": f"{prefix}What colour is shape {index}?"},
            {"from": "gpt", "value": ["red", "blue", "green"][index % 3]}]


def record_json(key: str, category: str, index: int, image: bool = True, scores: dict | None = None) -> bytes:
    from pipeline.record import SampleRecord

    record = SampleRecord(key=key, category=category, split="train", seed=index, caption="c",
                          conversations=conversation(index, image), scores=scores or {"rules/quality": index / 10})
    return json.dumps(record.to_json_dict()).encode()


def image_bytes(index: int, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (20 * index % 255, 100, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


def write_tar(path: Path, samples: list[dict[str, bytes]]) -> Path:
    """A tar with the given members per sample: {"__key__": key, "json": ..., "jpg": ...}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            key = sample["__key__"]
            for extension, data in sample.items():
                if extension == "__key__":
                    continue
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def image_samples(prefix: str, count: int, start: int = 0, fmt: str = "JPEG", **kwargs) -> list[dict[str, bytes]]:
    extension = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
    return [{"__key__": f"{prefix}_{i:05d}", "json": record_json(f"{prefix}_{i:05d}", "Cat", i, **kwargs),
             extension: image_bytes(i, fmt)} for i in range(start, start + count)]


def text_samples(prefix: str, count: int) -> list[dict[str, bytes]]:
    return [{"__key__": f"{prefix}_{i:05d}", "json": record_json(f"{prefix}_{i:05d}", "Text", i, image=False),
             "txt": b"text only"} for i in range(count)]


def write_sizes(directory: Path, tars: list[Path], counts: list[int]) -> None:
    (directory / "sizes.json").write_text(json.dumps({t.name: n for t, n in zip(tars, counts)}))


def plain_shards(directory: Path, count: int = 6) -> Path:
    """One shard of image samples asking "What colour is shape N?": no scene graph, no multiple choice; its glob."""
    tar = write_tar(directory / "train-00000.tar", image_samples("plain", count))
    write_sizes(directory, [tar], [count])
    return directory / "*.tar"
