"""The shard loader: bad samples skipped and counted, thresholds at load time, sampling strategies, equal batches per
slot on uneven shards, tokenization before decoding, and exact continuation from a saved position."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
import torch

from model.sequence import IGNORE_INDEX
from pipeline.record import SampleRecord
from tests.train.conftest import image_samples, text_samples, write_sizes, write_tar
from train.config import DataSection, SourceSpec
from train.loader import LoaderPosition, SampleProcessor, ShardLoader, shard_samples, slot_shards
from train.sources import Shard, resolve_sources, select


def make_loader(builder, path, *, micro_batch=2, batches=6, workers=0, rank=0, world=1, max_length=512, seed=0,
                resampled=False, split="shards", length_group=1, **source):
    sources = resolve_sources([SourceSpec(path=str(path), **source)], seed)
    data = DataSection(shuffle_buffer=8, shuffle_initial=2, num_workers=workers, prefetch_factor=2,
                       resampled=resampled, split=split, length_group=length_group)
    return ShardLoader(sources, builder, data, seed=seed, micro_batch=micro_batch, batches_per_epoch=batches,
                       max_length=max_length, rank=rank, world_size=world)


def keys_of(batches):
    return [key for batch in batches for key in batch.keys]


@pytest.fixture
def builder(tiny_model):
    return tiny_model.sequence_builder


def test_corrupt_shard_bad_json_and_bad_image_are_skipped_and_counted(builder, tmp_path):
    good = write_tar(tmp_path / "shards" / "good-00000.tar", image_samples("good", 6))
    truncated = write_tar(tmp_path / "shards" / "cut-00000.tar", image_samples("cut", 6))
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) * 6 // 10])  # a shard cut off mid-write
    broken = image_samples("mixed", 5)
    broken[1]["json"] = b"{not json"
    broken[3]["jpg"] = b"\xff\xd8 not an image"
    mixed = write_tar(tmp_path / "shards" / "mixed-00000.tar", broken)
    write_sizes(tmp_path / "shards", [good, truncated, mixed], [6, 6, 5])

    loader = make_loader(builder, tmp_path / "shards" / "*.tar", batches=12)
    batches = list(loader.epoch(0))
    assert len(batches) == 12  # training never stopped
    keys = set(keys_of(batches))
    assert "mixed_00001" not in keys and "mixed_00003" not in keys
    assert {"good_00000", "mixed_00000", "mixed_00004"} <= keys
    counts = batches[-1].position.counts
    assert counts["corrupt_shard"] >= 1 and counts["bad_json"] >= 1 and counts["bad_image"] >= 1
    # the truncated shard's last sample lost its image member: rejected, never trained on as text-only
    assert counts["missing_image"] >= 1 and "text_only_samples" not in counts
    assert all(batch.batch.has_image.all() for batch in batches)


def test_png_and_webp_members_decode_and_text_only_samples_have_no_pixels(builder, tmp_path):
    png = write_tar(tmp_path / "s" / "png-00000.tar", image_samples("png", 3, fmt="PNG"))
    webp = write_tar(tmp_path / "s" / "webp-00000.tar", image_samples("webp", 3, fmt="WEBP"))
    text = write_tar(tmp_path / "s" / "text-00000.tar", text_samples("text", 3))
    write_sizes(tmp_path / "s", [png, webp, text], [3, 3, 3])
    loader = make_loader(builder, tmp_path / "s" / "*.tar", micro_batch=9, batches=2)
    kinds = set()
    for batch in loader.epoch(0):
        has_image = batch.batch.has_image.tolist()
        assert has_image == [not key.startswith("text") for key in batch.keys]
        assert batch.batch.pixel_values.shape[0] == sum(has_image)
        kinds |= {key.split("_")[0] for key in batch.keys}
    assert kinds == {"png", "webp", "text"}


def test_tokenization_comes_before_image_decoding(builder, tmp_path, monkeypatch):
    samples = image_samples("ok", 4)
    long = image_samples("long", 1)[0]
    from tests.train.conftest import record_json

    long["json"] = record_json("long_00000", "Cat", 0).replace(b"What colour", b"What colour " + b"really " * 200)
    tar = write_tar(tmp_path / "s" / "a-00000.tar", [*samples, long])
    write_sizes(tmp_path / "s", [tar], [5])
    import train.loader as loader_module

    opened = []
    real_open = loader_module.Image.open
    monkeypatch.setattr(loader_module.Image, "open", lambda data: opened.append(1) or real_open(data))
    loader = make_loader(builder, tmp_path / "s" / "*.tar", micro_batch=4, batches=3, max_length=120)
    batches = list(loader.epoch(0))
    counts = batches[-1].position.counts
    assert "long_00000" not in keys_of(batches) and counts["too_long"] >= 1
    assert len(opened) == counts["image_samples"]  # the samples rejected on their text were never decoded


def test_score_thresholds_are_applied_at_load_time(builder, tmp_path):
    tar = write_tar(tmp_path / "s" / "a-00000.tar", image_samples("q", 10))  # rules/quality = i / 10
    write_sizes(tmp_path / "s", [tar], [10])
    loader = make_loader(builder, tmp_path / "s" / "*.tar", batches=6, min_scores={"rules/quality": 0.55})
    batches = list(loader.epoch(0))
    assert set(keys_of(batches)) == {f"q_{i:05d}" for i in range(6, 10)}
    assert batches[-1].position.counts["below_threshold"] > 0


def test_sampling_strategies_select_exact_positions():
    shards = [Shard("a", 4), Shard("b", 3), Shard("c", 5)]
    first = select(shards, "first:5", seed=0)
    assert [s.keep for s in first] == [None, (0,), ()]
    end = select(shards, "end:6", seed=0)
    assert [s.keep for s in end] == [(), (2,), None]
    random_pick = select(shards, "random:7", seed=3)
    assert sum(s.selected for s in random_pick) == 7 and random_pick == select(shards, "random:7", seed=3)
    assert random_pick != select(shards, "random:7", seed=4)
    assert sum(s.selected for s in select(shards, "50%", seed=0)) == 6
    assert sum(s.selected for s in select(shards, "first:25%", seed=0)) == 3
    assert select(shards, "all", seed=0) == shards


def test_every_slot_gets_the_same_batches_on_uneven_shards_and_shards_are_a_partition(builder, tmp_path):
    sizes = [7, 2, 5, 1, 8]  # an odd total: whatever the seeded shard order, the two slots hold different counts
    tars = [write_tar(tmp_path / "s" / f"x-{i:05d}.tar", image_samples(f"x{i}", n)) for i, n in enumerate(sizes)]
    write_sizes(tmp_path / "s", tars, sizes)
    loaders = [make_loader(builder, tmp_path / "s" / "*.tar", batches=7, rank=rank, world=2) for rank in (0, 1)]
    source = loaders[0].sources[0]
    parts = [slot_shards(source, seed=0, epoch=0, slot=slot, slots=2, resampled=False)[0] for slot in (0, 1)]
    assert sorted(s.url for part in parts for s in part) == sorted(s.url for s in source.shards)  # a partition
    assert sum(s.count for s in parts[0]) != sum(s.count for s in parts[1])  # uneven on purpose
    counts = [len(list(loader.epoch(0))) for loader in loaders]
    assert counts == [7, 7]


def test_split_by_samples_gives_every_rank_every_shard_and_the_same_latent_counts(builder, tmp_path):
    """One shard per family and two ranks: split by shards, each rank would train on its own families."""
    tars = [write_tar(tmp_path / "s" / f"{family}-00000.tar", image_samples(family, 8)) for family in ("red", "blue")]
    write_sizes(tmp_path / "s", tars, [8, 8])
    by_shards = [{key.split("_")[0] for key in keys_of(make_loader(builder, tmp_path / "s" / "*.tar", batches=4,
                                                                   rank=r, world=2).epoch(0))} for r in (0, 1)]
    assert sorted(map(len, by_shards)) == [1, 1]
    loaders = [make_loader(builder, tmp_path / "s" / "*.tar", batches=4, rank=r, world=2, split="samples",
                           length_group=2) for r in (0, 1)]
    batches = [list(loader.epoch(0)) for loader in loaders]
    seen = [set(keys_of(rank_batches)) for rank_batches in batches]
    assert not seen[0] & seen[1]  # each sample is read by one rank
    assert all({key.split("_")[0] for key in keys} == {"red", "blue"} for keys in seen)
    # the ranks' n-th micro-batches draw the same latent count (a step costs about the same on every rank)
    counts = [[batch.batch.latent_count for batch in rank_batches] for rank_batches in batches]
    assert counts[0] == counts[1] and len(set(counts[0])) > 1


def test_fewer_shards_than_slots_split_by_sample(builder, tmp_path):
    tar = write_tar(tmp_path / "s" / "one-00000.tar", image_samples("one", 8))
    write_sizes(tmp_path / "s", [tar], [8])
    seen = [set(keys_of(make_loader(builder, tmp_path / "s" / "*.tar", batches=2, rank=r, world=2).epoch(0)))
            for r in (0, 1)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_resumed_from_a_position_continues_exactly(builder, tmp_path, workers):
    tars = [write_tar(tmp_path / "s" / f"r-{i:05d}.tar", image_samples(f"r{i}", 5, start=0)) for i in range(3)]
    write_sizes(tmp_path / "s", tars, [5, 5, 5])

    def loader():
        return make_loader(builder, tmp_path / "s" / "*.tar", batches=9, workers=workers)

    uninterrupted = list(loader().epoch(0))
    position = LoaderPosition(epoch=0, num_workers=workers)
    first = loader().epoch(0, position)
    for _ in range(5):  # an odd count: with two workers the next batch comes from worker 1
        item = next(first)
        position.consumed(item.worker, item.position)
    del first
    resumed = list(loader().epoch(0, LoaderPosition.from_dict(position.to_dict())))
    assert [b.keys for b in resumed] == [b.keys for b in uninterrupted[5:]]
    assert all(torch.equal(a.batch.input_ids, b.batch.input_ids) for a, b in zip(resumed, uninterrupted[5:]))
    assert [b.batch.latent_count for b in resumed] == [b.batch.latent_count for b in uninterrupted[5:]]


def test_the_same_data_in_another_folder_is_read_in_the_same_order(builder, tmp_path):
    """Shuffles are seeded by the source's name or place in the mixture, not its path: a dataset moved to another
    disk, mount or run folder trains the same way."""
    tars = [write_tar(tmp_path / "a" / f"m-{i:05d}.tar", image_samples(f"m{i}", 4)) for i in range(6)]
    write_sizes(tmp_path / "a", tars, [4] * 6)
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")

    def order(folder, **source):
        loader = make_loader(builder, folder / "*.tar", batches=10, sampling="random:20", **source)
        return keys_of(loader.epoch(0)), keys_of(loader.epoch(1))

    here, moved = order(tmp_path / "a"), order(tmp_path / "elsewhere" / "b")
    assert here == moved and here[0] != here[1]
    assert order(tmp_path / "a", name="mine") == order(tmp_path / "elsewhere" / "b", name="mine") != here


def test_fsspec_urls_and_manifest_completeness(builder, small_dataset, tmp_path):
    url = f"file://{small_dataset}/data/SynthColor/train-*.tar"
    loader = make_loader(builder, url, batches=2)
    assert loader.sources[0].num_samples == 14  # counts from sizes.json beside the shards
    assert len(list(loader.epoch(0))) == 2

    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    incomplete = copy / "data" / "SynthColor" / "train-00099.tar"
    shutil.copy(copy / "data" / "SynthColor" / "train-00000.tar", incomplete)  # not in the manifest
    sources = resolve_sources([SourceSpec(path=str(copy / "data" / "*" / "train-*.tar"))], seed=0)
    assert str(incomplete) not in {s.url for s in sources[0].shards}
    folder = resolve_sources([SourceSpec(path=str(copy), categories=["SynthColor"], split="test")], seed=0)
    assert folder[0].num_samples == 5


def test_a_source_that_selects_nothing_is_an_error(tmp_path):
    from train.sources import DataSourceError

    with pytest.raises(DataSourceError, match="matches no tar"):
        resolve_sources([SourceSpec(path=str(tmp_path / "none-*.tar"))], seed=0)


def test_resampled_mixture_draws_sources_in_proportion_to_their_weights(builder, tmp_path):
    a = write_tar(tmp_path / "a" / "a-00000.tar", image_samples("a", 4))
    b = write_tar(tmp_path / "b" / "b-00000.tar", image_samples("b", 4))
    write_sizes(tmp_path / "a", [a], [4])
    write_sizes(tmp_path / "b", [b], [4])
    specs = [SourceSpec(path=str(a), weight=3.0), SourceSpec(path=str(b), weight=1.0)]
    data = DataSection(shuffle_buffer=4, shuffle_initial=1, num_workers=0, resampled=True)
    loader = ShardLoader(resolve_sources(specs, seed=0), builder, data, seed=0, micro_batch=8, batches_per_epoch=25,
                         max_length=512)
    keys = keys_of(loader.epoch(0))
    share = sum(key.startswith("a") for key in keys) / len(keys)
    assert len(keys) == 200 and 0.68 < share < 0.82  # 3:1 by weight, not 1:1 by size
    again = keys_of(make_loader(builder, a, batches=2, resampled=False).epoch(0))
    assert keys_of(loader.epoch(0)) == keys and again  # seeded: the same mixture every time


def varied_length_samples(prefix: str, count: int) -> list[dict[str, bytes]]:
    """Image samples whose conversations hold 1 to 4 question/answer pairs, in a mixed order."""
    import json

    from pipeline.record import SampleRecord
    from tests.train.conftest import image_bytes

    samples = []
    for i in range(count):
        turns = []
        for turn in range(1 + (i * 7) % 4):
            turns += [{"from": "human", "value": ("<image>\n" if not turn else "") + f"What colour is shape {turn}?"},
                      {"from": "gpt", "value": ["red", "blue", "green"][(i + turn) % 3]}]
        record = SampleRecord(key=f"{prefix}_{i:05d}", category="Cat", split="train", seed=i, caption="c",
                              conversations=turns, scores={"rules/quality": 1.0})
        samples.append({"__key__": record.key, "json": json.dumps(record.to_json_dict()).encode(),
                        "jpg": image_bytes(i)})
    return samples


def test_length_groups_pad_less_keep_every_sample_and_resume_exactly(builder, tmp_path):
    tars = [write_tar(tmp_path / "s" / f"g-{i:05d}.tar", varied_length_samples(f"g{i}", 12)) for i in range(2)]
    write_sizes(tmp_path / "s", tars, [12, 12])

    def loader(length_group):
        sources = resolve_sources([SourceSpec(path=str(tmp_path / "s" / "*.tar"))], 0)
        data = DataSection(shuffle_buffer=24, shuffle_initial=24, num_workers=0, length_group=length_group)
        return ShardLoader(sources, builder, data, seed=0, micro_batch=3, batches_per_epoch=8, max_length=512)

    def padding(batches):  # padded positions over real tokens
        return sum(b.batch.attention_mask.numel() for b in batches) / sum(b.num_tokens for b in batches)

    plain, grouped = list(loader(1).epoch(0)), list(loader(4).epoch(0))
    assert sorted(keys_of(plain)) == sorted(keys_of(grouped))  # the same samples, batched differently
    assert padding(grouped) < padding(plain)
    lengths = [b.batch.attention_mask.shape[1] for b in grouped]
    assert lengths != sorted(lengths)  # groups are handed out in a shuffled order, not short to long

    position = LoaderPosition(epoch=0, num_workers=0)
    first = loader(4).epoch(0, position)
    for _ in range(2):  # stop inside a group of four batches
        item = next(first)
        position.consumed(item.worker, item.position)
    assert item.position.group_batches == 2
    resumed = list(loader(4).epoch(0, LoaderPosition.from_dict(position.to_dict())))
    assert [b.keys for b in resumed] == [b.keys for b in grouped[2:]]
    assert [b.batch.latent_count for b in resumed] == [b.batch.latent_count for b in grouped[2:]]
    assert resumed[-1].position == grouped[-1].position


def descriptions_of(dataset, category):
    return {SampleRecord.from_json_dict(json.loads(raw["json"])).description
            for path in sorted(dataset.glob(f"data/{category}/train-*.tar"))
            for _, raw in shard_samples(Shard(str(path), 0), Counter())}


def test_a_text_only_source_can_read_its_answers_off_the_records_description(builder, small_dataset):
    descriptions = descriptions_of(small_dataset, "SynthMultiChoice")
    loader = make_loader(builder, small_dataset, micro_batch=4, batches=3, categories=["SynthMultiChoice"],
                         text_only=True, context="description")
    rows = 0
    for batch in loader.epoch(0):
        assert not batch.batch.has_image.any()
        for row in batch.batch.input_ids:
            text = builder.tokenizer.decode(row, skip_special_tokens=True)
            passage = next(d for d in descriptions if d in text)  # the record's passage, then its questions
            assert text.index(passage) < text.index("Answer with the option's letter")
            rows += 1
    assert rows == 12


def test_a_record_without_the_context_field_is_counted_not_trained_on(builder, tmp_path):
    tar = write_tar(tmp_path / "s" / "t-00000.tar", image_samples("x", 2))  # records with a caption, no description
    write_sizes(tmp_path / "s", [tar], [2])
    sources = resolve_sources([SourceSpec(path=str(tar), text_only=True, context="description")], seed=0)
    processor = SampleProcessor(builder, sources, DataSection(), max_length=512)
    counts = Counter()
    assert all(processor(raw, counts) is None for _, raw in shard_samples(sources[0].shards[0], Counter()))
    assert counts["missing_context"] == 2


def test_a_describe_source_trains_on_the_records_description_as_the_answer_about_its_image(builder, small_dataset):
    descriptions = descriptions_of(small_dataset, "SynthColor")
    loader = make_loader(builder, small_dataset, micro_batch=4, batches=2, categories=["SynthColor"],
                         describe="description")
    prompts = set(loader.processor.describe_prompts["description"])
    rows = 0
    for batch in loader.epoch(0):
        assert batch.batch.has_image.all()
        for row, labels in zip(batch.batch.input_ids, batch.batch.labels):
            answer = builder.tokenizer.decode(labels[labels != IGNORE_INDEX], skip_special_tokens=True).strip()
            assert answer in descriptions  # every word of the description is supervised, nothing else is
            text = builder.tokenizer.decode(row, skip_special_tokens=True)
            assert any(prompt in text for prompt in prompts) and "caption" not in text.lower()
            rows += 1
    assert rows == 8


def test_a_record_without_the_described_field_is_counted_and_describe_needs_the_image(builder, tmp_path):
    from pydantic import ValidationError

    tar = write_tar(tmp_path / "s" / "t-00000.tar", image_samples("x", 2))  # records with a caption, no description
    write_sizes(tmp_path / "s", [tar], [2])
    sources = resolve_sources([SourceSpec(path=str(tar), describe="description")], seed=0)
    processor = SampleProcessor(builder, sources, DataSection(), max_length=512)
    counts = Counter()
    assert all(processor(raw, counts) is None for _, raw in shard_samples(sources[0].shards[0], Counter()))
    assert counts["missing_context"] == 2
    with pytest.raises(ValidationError, match="describe: 'caption' needs the image"):
        SourceSpec(path="x", describe="caption", text_only=True)


def test_context_needs_a_text_only_source():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="context: 'description' needs text_only"):
        SourceSpec(path="x", context="description")


def test_an_empty_conversation_in_a_context_source_is_counted_not_a_crash(builder, tmp_path):
    record = SampleRecord(key="empty", category="c", split="train", seed=0, description="A red star.",
                          conversations=[])
    sample = {"__key__": "empty", "json": json.dumps(record.to_json_dict()).encode()}
    tar = write_tar(tmp_path / "s" / "e-00000.tar", [sample])
    write_sizes(tmp_path / "s", [tar], [1])
    sources = resolve_sources([SourceSpec(path=str(tar), text_only=True, context="description")], seed=0)
    counts = Counter()
    assert all(SampleProcessor(builder, sources, DataSection(), max_length=512)(raw, counts) is None
               for _, raw in shard_samples(sources[0].shards[0], Counter()))
    assert sum(counts.values()) == 1 and "missing_context" not in counts
