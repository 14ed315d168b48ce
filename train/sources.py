"""Data sources of a training mixture: which shards, how many samples each holds, and which of them are used.

A source is a dataset folder written by `fusion synth` / `fusion convert` (its `manifest.json` lists the complete
shards: tars that are not listed are never read), a glob of local tars, or an fsspec URL or glob
(`s3://bucket/data/*/train-*.tar`, `file:///...`). Sample counts come from the manifest, else from the nearest
`sizes.json`, else from reading the tar once. The paper's `sampling_strategy` (all, first:N, end:N, random:N, N%)
becomes a per-shard selection of sample positions, so the epoch length is known before any tar is opened.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import random
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import braceexpand
import fsspec

from pipeline.planning import derive_seed
from train.config import SourceSpec

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SIZES = "sizes.json"


class DataSourceError(ValueError):
    """A source that names no readable shard; the message names the source."""


@dataclass(frozen=True)
class Shard:
    url: str  # local path or fsspec URL
    count: int  # samples in the tar
    keep: tuple[int, ...] | None = None  # sorted positions used (None: every sample)

    @property
    def selected(self) -> int:
        return self.count if self.keep is None else len(self.keep)


@dataclass(frozen=True)
class Source:
    spec: SourceSpec
    shards: tuple[Shard, ...]
    # What the source's shuffles are seeded with: its name, else its place in the mixture. Never its path, so the
    # same data read from another folder, mount or URL is trained on in the same order.
    seed_key: str

    @property
    def name(self) -> str:
        return self.spec.label

    @property
    def num_samples(self) -> int:
        return sum(shard.selected for shard in self.shards)


def is_url(path: str) -> bool:
    return "://" in path


def resolve_sources(specs: Iterable[SourceSpec], seed: int) -> list[Source]:
    sources = []
    for index, spec in enumerate(specs):
        if spec.path is None:
            raise DataSourceError(f"data.sources.{index} ({spec.label}) names no path: give --data or set its path")
        seed_key = spec.name or f"source-{index}"
        shards = select(list_shards(spec), spec.sampling, derive_seed(seed, "sampling", seed_key))
        source = Source(spec, tuple(shard for shard in shards if shard.selected > 0), seed_key)
        if not source.shards:
            raise DataSourceError(f"data source {spec.label!r} selects no sample (sampling={spec.sampling!r})")
        logger.info("source %s: %d shards, %d samples selected (%s)", source.name, len(source.shards),
                    source.num_samples, spec.sampling)
        sources.append(source)
    if not sources:
        raise DataSourceError("the training config has no data source (data.sources, or --data)")
    return sources


def list_shards(spec: SourceSpec) -> list[Shard]:
    """Every complete shard of a source with its sample count, in a stable order."""
    path = spec.path
    if not is_url(path) and (Path(path).expanduser() / MANIFEST).is_file():
        return _manifest_shards(Path(path).expanduser(), spec)
    urls = _expand(path)
    if not urls:
        raise DataSourceError(f"data source {spec.label!r}: {path!r} matches no tar")
    if is_url(path):
        return [Shard(url, _remote_count(url)) for url in urls]
    return _local_shards([Path(url) for url in urls], spec)


def _expand(path: str) -> list[str]:
    urls: list[str] = []
    for pattern in braceexpand.braceexpand(path):
        if is_url(pattern):
            fs, _, paths = fsspec.get_fs_token_paths(pattern)
            protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
            urls += [f"{protocol}://{p}" if "://" not in p else p for p in paths]
        elif glob.has_magic(pattern):
            urls += sorted(glob.glob(str(Path(pattern).expanduser())))
        elif Path(pattern).expanduser().is_file():
            urls.append(str(Path(pattern).expanduser()))
    return sorted(dict.fromkeys(urls))


def _manifest_shards(root: Path, spec: SourceSpec) -> list[Shard]:
    manifest = json.loads((root / MANIFEST).read_text())
    shards = []
    for entry in manifest["shards"]:
        if spec.split is not None and entry["split"] != spec.split:
            continue
        if spec.categories is not None and entry["category"] not in spec.categories:
            continue
        if entry["count"]:
            shards.append(Shard(str(root / entry["path"]), int(entry["count"])))
    if not shards:
        raise DataSourceError(
            f"data source {spec.label!r}: {root / MANIFEST} lists no shard of split={spec.split!r}, "
            f"categories={spec.categories}"
        )
    return sorted(shards, key=lambda shard: shard.url)


def _local_shards(paths: list[Path], spec: SourceSpec) -> list[Shard]:
    shards = []
    for path in paths:
        root = _dataset_root(path)
        if root is not None:
            listed = {str(root / e["path"]): int(e["count"]) for e in json.loads((root / MANIFEST).read_text())["shards"]}
            if str(path) not in listed:
                logger.warning("source %s: %s is not in %s (incomplete shard), skipped", spec.label, path,
                               root / MANIFEST)
                continue
            shards.append(Shard(str(path), listed[str(path)]))
            continue
        count = _sizes_json_count(path)
        if count is None:
            logger.warning("source %s: no manifest.json or sizes.json for %s; counting its samples", spec.label, path)
            with open(path, "rb") as handle:
                count = count_tar_samples(handle)
        shards.append(Shard(str(path), count))
    return [shard for shard in shards if shard.count]


def _dataset_root(path: Path) -> Path | None:
    for parent in list(path.resolve().parents)[:3]:
        if (parent / MANIFEST).is_file():
            return parent
    return None


def _sizes_json_count(path: Path) -> int | None:
    """The count of `path` from `sizes.json` beside it (basename keys) or in a parent (relative-path keys)."""
    for parent in list(path.resolve().parents)[:3]:
        sizes_file = parent / SIZES
        if sizes_file.is_file():
            sizes = json.loads(sizes_file.read_text())
            key = str(path.resolve().relative_to(parent))
            if key in sizes:
                return int(sizes[key])
    return None


def _remote_count(url: str) -> int:
    """Count from a sizes.json beside the shard or one or two folders up, else by streaming the tar once."""
    parts = url.rstrip("/").split("/")
    for up in (1, 2, 3):
        sizes_url = "/".join(parts[:-up] + [SIZES])
        key = "/".join(parts[-up:])
        try:
            with fsspec.open(sizes_url, "rb") as handle:
                sizes = json.loads(handle.read())
        except (FileNotFoundError, OSError, ValueError):
            continue
        if key in sizes:
            return int(sizes[key])
    logger.warning("no sizes.json for %s; counting its samples by reading it", url)
    with fsspec.open(url, "rb") as handle:
        return count_tar_samples(handle)


def count_tar_samples(handle: io.BufferedIOBase) -> int:
    keys = set()
    with tarfile.open(fileobj=handle, mode="r|*") as tar:
        for member in tar:
            if member.isreg():
                keys.add(member.name.split("/")[-1].split(".", 1)[0])
    return len(keys)


def select(shards: list[Shard], sampling: str, seed: int) -> list[Shard]:
    """Apply a sampling strategy over the shards in order: every shard gets the positions it contributes."""
    total = sum(shard.count for shard in shards)
    if sampling == "all":
        return shards
    mode, _, amount = sampling.rpartition(":")
    mode = mode or "random"  # a bare "N%" samples at random
    wanted = round(total * float(amount[:-1]) / 100) if amount.endswith("%") else int(amount)
    wanted = min(wanted, total)
    if mode == "first":
        chosen = range(wanted)
    elif mode == "end":
        chosen = range(total - wanted, total)
    else:
        chosen = sorted(random.Random(seed).sample(range(total), wanted))
    return _split_positions(shards, chosen)


def _split_positions(shards: list[Shard], chosen: Iterable[int]) -> list[Shard]:
    per_shard: list[list[int]] = [[] for _ in shards]
    starts, offset = [], 0
    for shard in shards:
        starts.append(offset)
        offset += shard.count
    index = 0
    for position in chosen:
        while position >= starts[index] + shards[index].count:
            index += 1
        per_shard[index].append(position - starts[index])
    result = []
    for shard, positions in zip(shards, per_shard, strict=True):
        keep = None if len(positions) == shard.count else tuple(positions)
        result.append(Shard(shard.url, shard.count, keep))
    return result
