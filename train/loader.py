"""The training data loader: WebDataset shards -> tokenized, decoded, collated FUSION micro-batches.

Each (rank, worker) slot runs one explicit chain, open_clip style, every stage seeded from (seed, epoch, slot):

    per source: shard order (seeded shuffle per pass, or resampled)  -> split by node and worker
                -> tar samples (webdataset's tar expander and key grouping) -> sampling-strategy positions
    weighted mix of the sources -> shuffle buffer -> [resume: skip] -> parse JSON record -> score thresholds
    -> tokenize (chat template) -> decode image -> collate (Q drawn per batch) -> exactly N batches per worker

Shards are split between slots when there are at least as many shards as slots, else samples are (every slot reads
every shard and keeps every n-th sample), so no slot is ever empty. Sources loop over their shards forever; a rank
with fewer samples simply repeats sooner, and every rank yields the same number of batches per epoch (webdataset's
`with_epoch`), so DDP and FSDP never wait on a rank that ran out.

Bad samples (a truncated or corrupt tar, JSON that does not parse, an image that does not decode, a conversation
the template cannot render, a sample too long to keep its first question) are logged, counted per reason, and
skipped; training stops only when more than `data.max_bad_fraction` of the samples are bad.

Position: every batch carries its worker's position (samples taken from the shuffled stream, batches made, counts).
The stream before the skip point depends on (seed, epoch, slot) only, so a resumed loader that skips the same number
of samples continues exactly where the checkpoint was taken. DataLoader workers hand batches out round robin; on
resume the physical workers are rotated so that worker 0 plays the logical worker whose batch comes next.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from generators.prompts.library import load_list
from model.batch import FusionBatch
from model.sequence import IMAGE_PLACEHOLDER, SequenceBuilder, SequenceTooLongError, TokenizedConversation
from pipeline.planning import derive_seed
from pipeline.record import SampleRecord
from train.choices import with_answer_form
from train.config import DataSection
from train.sources import Shard, Source, is_url

logger = logging.getLogger(__name__)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the loader forks workers after tokenizing

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
BAD_REASONS = ("unreadable_shard", "corrupt_shard", "missing_json", "bad_json", "missing_image", "bad_conversation",
               "no_supervised_tokens", "too_long", "bad_image", "missing_context")
FILTERED_REASONS = ("below_threshold",)
WARN_FIRST = 20  # bad samples logged in full per worker before logging every 100th


def image_member(raw: dict[str, Any]) -> bytes | None:
    """The encoded image of a raw webdataset sample, None when it has none."""
    return next((raw[ext] for ext in IMAGE_EXTENSIONS if ext in raw), None)


class TooManyBadSamplesError(RuntimeError):
    """More than `data.max_bad_fraction` of the samples read are bad."""


@dataclass
class WorkerPosition:
    offset: int = 0  # samples taken from the shuffled stream
    batches: int = 0  # batches made (and, in a checkpoint, consumed)
    counts: dict[str, int] = field(default_factory=dict)  # bad and filtered samples by reason
    # Inside a length group: `offset` and `counts` are those of the group's start, and this many of the group's
    # batches are made; a resumed loader rebuilds the group from its start and skips them.
    group_batches: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"offset": self.offset, "batches": self.batches, "counts": dict(self.counts),
                "group_batches": self.group_batches}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerPosition:
        return cls(int(data["offset"]), int(data["batches"]), {k: int(v) for k, v in data["counts"].items()},
                   int(data.get("group_batches", 0)))


@dataclass
class LoaderPosition:
    """Where one rank's loader is: the epoch, micro-batches consumed in it, and each logical worker's position."""

    epoch: int = 0
    batches: int = 0
    num_workers: int = 0
    world_size: int = 1
    workers: dict[int, WorkerPosition] = field(default_factory=dict)

    def consumed(self, worker: int, position: WorkerPosition) -> None:
        self.batches += 1
        self.workers[worker] = position

    def counts(self) -> Counter:
        total: Counter = Counter()
        for position in self.workers.values():
            total.update(position.counts)
        return total

    def samples_read(self) -> int:
        return sum(position.offset for position in self.workers.values())

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches": self.batches, "num_workers": self.num_workers,
                "world_size": self.world_size,
                "workers": {str(k): v.to_dict() for k, v in sorted(self.workers.items())}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoaderPosition:
        workers = {int(k): WorkerPosition.from_dict(v) for k, v in data["workers"].items()}
        return cls(int(data["epoch"]), int(data["batches"]), int(data["num_workers"]), int(data["world_size"]),
                   workers)


@dataclass
class PreparedSample:
    key: str
    tokenized: TokenizedConversation
    pixels: torch.Tensor | None


@dataclass
class TrainBatch:
    batch: FusionBatch
    worker: int  # logical worker that made it
    position: WorkerPosition  # that worker's position right after this batch
    keys: list[str]

    @property
    def num_samples(self) -> int:
        return self.batch.batch_size

    @property
    def num_tokens(self) -> int:
        return int(self.batch.attention_mask.sum())

    def pin_memory(self) -> TrainBatch:
        self.batch = self.batch.pin_memory()
        return self


# --- reading shards --------------------------------------------------------------------------------------------

def open_shard(url: str):
    """A binary stream of a local tar or of any fsspec URL."""
    if is_url(url):
        return fsspec.open(url, "rb").open()
    return open(url, "rb")


def shard_samples(shard: Shard, counts: Counter) -> Iterator[tuple[int, dict[str, Any]]]:
    """(position in the shard, raw sample) for every sample of a tar; errors are counted and the shard skipped.

    webdataset's own `group_by_keys` understands the end-of-shard marker that `tar_file_expander` yields in 1.0.2
    (open_clip's `group_by_keys_nothrow` does not), and the marker stops a truncated shard's partial last sample
    from merging with the next shard's first."""

    failed = []

    def handler(error: Exception) -> bool:
        if not failed:  # the expander and the grouping both report the same broken stream
            counts["corrupt_shard"] += 1
            logger.warning("corrupt or truncated shard %s: %s (rest of the shard skipped)", shard.url, error)
        failed.append(error)
        return True

    try:
        stream = open_shard(shard.url)
    except OSError as error:
        counts["unreadable_shard"] += 1
        logger.warning("cannot open shard %s: %s (skipped)", shard.url, error)
        return
    try:
        files = tar_file_expander([{"url": shard.url, "stream": stream}], handler=handler)
        yield from enumerate(group_by_keys(files, handler=handler))
    finally:
        stream.close()


def slot_shards(source: Source, *, seed: int, epoch: int, slot: int, slots: int, resampled: bool,
                round_: int = 0, split_samples: bool = False) -> tuple[list[Shard], bool]:
    """(shards this slot reads in pass `round_` of an epoch, whether they are split between slots).

    Without resampling, one seeded shard order per epoch is shared by every slot, so the split (by node, then by
    worker) is a partition that holds for the whole epoch; later passes only reorder a slot's own shards."""
    shards = list(source.shards)
    if resampled:  # each slot draws its own shards with replacement: no split needed
        rng = random.Random(derive_seed(seed, "resample", source.seed_key, epoch, slot, round_))
        return [rng.choice(shards) for _ in shards], False
    order = shards[:]
    random.Random(derive_seed(seed, "shards", source.seed_key, epoch)).shuffle(order)
    if len(shards) < slots or split_samples:
        return order, False  # too few shards (or asked): every slot reads them all and keeps every n-th sample
    mine = order[slot::slots]
    if round_:
        random.Random(derive_seed(seed, "pass", source.seed_key, epoch, slot, round_)).shuffle(mine)
    return mine, True


def source_samples(source: Source, index: int, *, seed: int, epoch: int, slot: int, slots: int, resampled: bool,
                   counts: Counter, split_samples: bool = False) -> Iterator[dict[str, Any]]:
    """Endless raw samples of one source for one slot: pass after pass over its shards."""
    for round_ in itertools.count():
        mine, split = slot_shards(source, seed=seed, epoch=epoch, slot=slot, slots=slots, resampled=resampled,
                                  round_=round_, split_samples=split_samples)
        yielded = kept = 0
        for shard in mine:
            keep = None if shard.keep is None else set(shard.keep)
            for position, raw in shard_samples(shard, counts):
                if keep is not None and position not in keep:
                    continue
                kept += 1
                if not split and not resampled and (kept - 1) % slots != slot:
                    continue
                raw["__source__"] = index
                yielded += 1
                yield raw
        if yielded == 0:
            raise RuntimeError(f"data source {source.name!r}: no readable sample for slot {slot} of {slots}")


def weighted_mix(streams: list[Iterator[dict[str, Any]]], weights: list[float], rng: random.Random
                 ) -> Iterator[dict[str, Any]]:
    """Draw each next sample from a source chosen in proportion to its weight (seeded, unlike wds.RandomMix)."""
    if len(streams) == 1:
        yield from streams[0]
        return
    choices = range(len(streams))
    while True:
        yield next(streams[rng.choices(choices, weights)[0]])


# --- per-sample processing -------------------------------------------------------------------------------------

class SampleProcessor:
    """Raw tar sample -> PreparedSample (or None, counted): parse, filter by scores, tokenize, then decode."""

    def __init__(self, builder: SequenceBuilder, sources: list[Source], data: DataSection, max_length: int) -> None:
        self.builder = builder
        self.sources = sources
        self.data = data
        self.max_length = max_length
        self.longest_latent_count = max(builder.config.card.latent_counts) if builder.config.use_card else 0
        self._warned = 0
        # the requests of the describe sources: detailed ones for the description (LLaVA detail_23k style), brief
        # ones for the caption
        prompt_lists = {"description": "detail_prompts", "caption": "caption_prompts"}
        self.describe_prompts = {field: load_list("conversation", prompt_lists[field], "prompts")[0]
                                 for field in {source.spec.describe for source in sources} - {None}}

    def __call__(self, raw: dict[str, Any], counts: Counter) -> PreparedSample | None:
        key = str(raw.get("__key__", "?"))
        source = self.sources[raw.get("__source__", 0)]
        if "json" not in raw:
            return self._bad(counts, "missing_json", key, "the sample has no .json member")
        try:
            record = SampleRecord.from_json_dict(json.loads(raw["json"]))
        except (ValueError, TypeError) as error:
            return self._bad(counts, "bad_json", key, str(error))
        if not self._passes_thresholds(record.scores, source):
            counts["below_threshold"] += 1
            return None
        image_bytes = None if source.spec.text_only else image_member(raw)
        has_image = image_bytes is not None
        if not has_image and not source.spec.text_only and _asks_for_image(record.conversations):
            # a sample of an image shard that lost its image member (a truncated tar) is not a text-only sample
            return self._bad(counts, "missing_image", key, "the conversation has <image> but the sample no image")
        if source.spec.describe is not None:
            if not has_image:
                return self._bad(counts, "missing_image", key, "a describe source needs the sample's image")
            text = getattr(record, source.spec.describe).strip()
            if not text:
                return self._bad(counts, "missing_context", key, f"the record has no {source.spec.describe} to describe")
            conversation = describe_turns(text, self.describe_prompts[source.spec.describe], key)
        else:
            conversation = record.conversations if has_image else without_image_token(record.conversations)
        conversation = with_answer_form(conversation, self.data.multiple_choice_answer)
        if source.spec.context is not None:
            context = getattr(record, source.spec.context).strip()
            if not context:
                return self._bad(counts, "missing_context", key, f"the record has no {source.spec.context} to read")
            conversation = with_context(conversation, context)
        try:
            tokenized = self.builder.tokenize(conversation, has_image=has_image)
        except ValueError as error:
            return self._bad(counts, "bad_conversation", key, str(error))
        if tokenized.num_supervised == 0:
            return self._bad(counts, "no_supervised_tokens", key, "no assistant token is supervised")
        try:  # the longest Q this sample can be given must still keep its first question
            self.builder.assemble(tokenized, has_image=has_image, latent_count=self.longest_latent_count,
                                  max_length=self.max_length)
        except SequenceTooLongError as error:
            return self._bad(counts, "too_long", key, str(error))
        pixels = None
        if has_image:  # decoded only now: text problems never cost an image decode
            try:
                image = Image.open(io.BytesIO(image_bytes))
                image.load()
                pixels = self.builder.image_processor(image.convert("RGB"))
            except Exception as error:  # PIL raises many types for broken images
                return self._bad(counts, "bad_image", key, f"{type(error).__name__}: {error}")
        counts["image_samples" if has_image else "text_only_samples"] += 1
        return PreparedSample(key, tokenized, pixels)

    def _passes_thresholds(self, scores: dict[str, float], source: Source) -> bool:
        minimums = {**self.data.min_scores, **source.spec.min_scores}
        maximums = {**self.data.max_scores, **source.spec.max_scores}
        for name, bound in minimums.items():
            if name not in scores or scores[name] < bound:
                return False
        for name, bound in maximums.items():
            if name not in scores or scores[name] > bound:
                return False
        return True

    def _bad(self, counts: Counter, reason: str, key: str, detail: str) -> None:
        counts[reason] += 1
        self._warned += 1
        if self._warned <= WARN_FIRST or self._warned % 100 == 0:
            logger.warning("skipped bad sample %s (%s): %s [%d bad so far in this worker]", key, reason, detail[:200],
                           self._warned)
        return None


def _asks_for_image(conversation: list[dict[str, str]]) -> bool:
    return any(IMAGE_PLACEHOLDER in str(turn.get("value", "")) for turn in conversation)


def without_image_token(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{**turn, "value": turn["value"].replace(f"{IMAGE_PLACEHOLDER}\n", "").replace(IMAGE_PLACEHOLDER, "")}
            for turn in conversation]


def describe_turns(text: str, prompts: Sequence[str], key: str) -> list[dict[str, str]]:
    """One turn asking to describe the image and answering with ``text``; the request is picked by the key, so a
    sample reads the same in every epoch and on every rank."""
    prompt = prompts[derive_seed("describe", key) % len(prompts)]
    return [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{prompt}"}, {"from": "gpt", "value": text}]


def with_context(conversation: list[dict[str, str]], context: str) -> list[dict[str, str]]:
    """The text put before the first question: the passage a text-only sample's answers are read from (an empty
    conversation stays empty, for tokenize to reject)."""
    if not conversation:
        return conversation
    first, *rest = conversation
    return [{**first, "value": f"{context}\n{first['value']}"}, *rest]


def bad_count(counts: Counter | dict[str, int]) -> int:
    return sum(counts.get(reason, 0) for reason in BAD_REASONS if reason not in ("corrupt_shard", "unreadable_shard"))


# --- the loader ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    rank: int
    world_size: int
    worker: int  # logical worker
    num_workers: int

    @property
    def index(self) -> int:
        return self.rank * self.num_workers + self.worker

    @property
    def count(self) -> int:
        return self.world_size * self.num_workers


class ShardLoader:
    """One rank's loader; `epoch(e, position)` iterates that epoch's micro-batches (resuming from `position`)."""

    def __init__(self, sources: list[Source], builder: SequenceBuilder, data: DataSection, *, seed: int,
                 micro_batch: int, batches_per_epoch: int, max_length: int, rank: int = 0, world_size: int = 1
                 ) -> None:
        self.sources = sources
        self.builder = builder
        self.data = data
        self.seed = seed
        self.micro_batch = micro_batch
        self.batches_per_epoch = batches_per_epoch  # micro-batches this rank consumes per epoch
        self.rank = rank
        self.world_size = world_size
        self.num_workers = data.num_workers
        self.processor = SampleProcessor(builder, sources, data, max_length)
        self.max_length = max_length

    @property
    def batches_per_worker(self) -> int:
        """Every worker of every rank makes exactly this many batches per epoch (with_epoch)."""
        return math.ceil(self.batches_per_epoch / max(1, self.num_workers))

    def new_position(self, epoch: int) -> LoaderPosition:
        return LoaderPosition(epoch=epoch, num_workers=self.num_workers, world_size=self.world_size)

    def epoch(self, epoch: int, position: LoaderPosition | None = None) -> Iterator[TrainBatch]:
        position = position or self.new_position(epoch)
        if (position.num_workers, position.world_size) != (self.num_workers, self.world_size):
            raise ValueError(
                f"the checkpoint's loader ran {position.world_size} ranks x {position.num_workers} workers; this run "
                f"has {self.world_size} x {self.num_workers}: resume with the same data.num_workers and world size"
            )
        dataset = _EpochDataset(self, epoch, position)
        if self.num_workers == 0:
            return iter(dataset)
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                            prefetch_factor=self.data.prefetch_factor, pin_memory=torch.cuda.is_available(),
                            worker_init_fn=_worker_init, persistent_workers=False)
        return iter(loader)

    def worker_batches(self, epoch: int, slot: Slot, start: WorkerPosition) -> Iterator[TrainBatch]:
        """Endless batches of one logical worker, from its position `start`."""
        counts: Counter = Counter(start.counts)
        streams = [
            source_samples(source, index, seed=self.seed, epoch=epoch, slot=slot.index, slots=slot.count,
                           resampled=self.data.resampled, counts=counts, split_samples=self.data.split == "samples")
            for index, source in enumerate(self.sources)
        ]
        mixed = weighted_mix(streams, [s.spec.weight for s in self.sources],
                             random.Random(derive_seed(self.seed, "mix", epoch, slot.index)))
        shuffle_rng = random.Random(derive_seed(self.seed, "shuffle", epoch, slot.index))
        shuffled = wds.shuffle(self.data.shuffle_buffer, self.data.shuffle_initial, rng=shuffle_rng)(mixed)
        for _ in range(start.offset):  # resume: the stream up to here depends on (seed, epoch, slot) only
            next(shuffled)
        offset = group_start = start.offset
        group_counts = dict(counts)
        first_batch = start.batches - start.group_batches  # index of the current group's first batch
        skip = start.group_batches  # batches of the current group a resumed loader has already handed out
        group_size = self.micro_batch * self.data.length_group
        pending: list[PreparedSample] = []
        for raw in shuffled:
            offset += 1
            prepared = self.processor(raw, counts)
            self._check_bad_fraction(counts, offset)
            if prepared is None:
                continue
            pending.append(prepared)
            if len(pending) < group_size:
                continue
            # Seeded by the worker, not the rank: the ranks' n-th micro-batches then hold the same length band and
            # latent count (one rank's step is not a band of long conversations while another waits on it).
            chunks = self.length_chunks(pending, random.Random(derive_seed(self.seed, "groups", epoch, slot.worker,
                                                                           group_start)))
            for index, chunk in enumerate(chunks):
                if index < skip:
                    continue
                batches = first_batch + index + 1
                rng = random.Random(derive_seed(self.seed, "latents", epoch, slot.worker, batches - 1))
                batch = self.collate(chunk, rng)
                position = (WorkerPosition(offset, batches, dict(counts)) if index == len(chunks) - 1 else
                            WorkerPosition(group_start, batches, dict(group_counts), group_batches=index + 1))
                yield TrainBatch(batch, slot.worker, position, [p.key for p in chunk])
            first_batch += len(chunks)
            skip, pending, group_start, group_counts = 0, [], offset, dict(counts)

    def length_chunks(self, samples: list[PreparedSample], rng: random.Random) -> list[list[PreparedSample]]:
        """Micro-batches of `samples`: with `data.length_group` > 1, samples of similar length share a batch (less
        padding, as LLaVA's length-grouped sampler does) and the batches come in a seeded random order."""
        size, grouped = self.micro_batch, self.data.length_group > 1
        # sorted() is stable: ties keep stream order
        ordered = sorted(samples, key=lambda sample: sample.tokenized.num_tokens) if grouped else samples
        chunks = [ordered[start : start + size] for start in range(0, len(ordered), size)]
        if grouped:
            rng.shuffle(chunks)
        return chunks

    def collate(self, samples: list[PreparedSample], rng: random.Random) -> FusionBatch:
        builder = self.builder
        latent_count = builder.latent_count(for_generation=False, rng=rng) if builder.config.use_card else 0
        encoded = []
        for sample in samples:
            has_image = sample.pixels is not None
            item = builder.assemble(sample.tokenized, has_image=has_image, latent_count=latent_count,
                                    max_length=self.max_length)
            item.pixel_values = sample.pixels
            encoded.append(item)
        return builder.pad(encoded, latent_count=latent_count, for_generation=False)

    def _check_bad_fraction(self, counts: Counter, offset: int) -> None:
        bad = bad_count(counts)
        if offset >= 200 and bad > self.data.max_bad_fraction * offset:
            raise TooManyBadSamplesError(
                f"{bad} of the last {offset} samples read are bad ({dict(counts)}); data.max_bad_fraction is "
                f"{self.data.max_bad_fraction}: check the shards and the chat template"
            )


class _EpochDataset(IterableDataset):
    def __init__(self, loader: ShardLoader, epoch: int, position: LoaderPosition) -> None:
        super().__init__()
        self.loader = loader
        self.epoch_index = epoch
        self.position = position

    def __iter__(self) -> Iterator[TrainBatch]:
        loader, position = self.loader, self.position
        info = get_worker_info()
        workers = max(1, loader.num_workers)
        physical = info.id if info is not None else 0
        # DataLoader asks its workers round robin from worker 0: rotate so worker 0 makes the next batch.
        logical = (physical + position.batches) % workers
        start = position.workers.get(logical, WorkerPosition())
        slot = Slot(loader.rank, loader.world_size, logical, workers)
        remaining = loader.batches_per_worker - start.batches
        if remaining <= 0:
            return iter(())
        pipeline = wds.DataPipeline(lambda: loader.worker_batches(self.epoch_index, slot, start))
        return iter(pipeline.with_epoch(nbatches=remaining))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # image preprocessing in workers must not compete with the trainer's threads
