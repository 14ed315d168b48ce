"""Stages defined outside the project's packages, loaded through the config's `plugins` list.

Several stand in for model-backed stages the engine must survive: one that raises on some samples, one
whose worker dies, one whose output is random per call but cached, one that sleeps a fixed time per sample.
"""

import itertools
import os
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.record import SampleRecord
from pipeline.stage import Filter, GlobalStage, Stage, StageParams, UnitContext, register_stage

_instances = itertools.count()


class LengthModelParams(StageParams):
    min_words: int = Field(3, ge=0)


@register_stage("test_length_model")
class LengthModelFilter(Filter):
    """Stands for a model-backed filter: it "loads" once per actor, and stamps what loaded it on each score."""

    Params = LengthModelParams
    params: LengthModelParams
    uses_model = True

    def __init__(self, stage_id, params, context):
        super().__init__(stage_id, params, context)
        self.instance = (os.getpid(), next(_instances))

    def score(self, record: SampleRecord) -> dict[str, float]:
        return {"answer_words": len(record.conversations[-1]["value"].split()), "loader_pid": self.instance[0],
                "loader_instance": self.instance[1]}

    def check(self, record: SampleRecord, scores: dict[str, float]) -> str | None:
        if scores["answer_words"] < self.params.min_words:
            return f"answer_too_short: {scores['answer_words']:.0f} words < {self.params.min_words}"
        return None


@register_stage("test_tagger")
class TaggerStage(Stage):
    """A plain stage after the model stage, to check records keep flowing through several segments."""

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        for record in records:
            record.metadata["tagged_by"] = f"test_tagger/{unit.unit.unit_id}"


class FaultParams(StageParams):
    every: int = Field(7, ge=1, description="Raise on samples whose position is a multiple of this")


@register_stage("test_raise_every")
class RaiseEvery(Stage):
    """Raises whenever its batch holds a sample at a position that is a multiple of ``every``."""

    Params = FaultParams
    params: FaultParams

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        for record in records:
            position = int(record.key.rsplit("_", 1)[1])
            if position % self.params.every == 0:
                raise ValueError(f"cannot handle position {position}")
            record.scores[f"{self.id}/seen"] = 1.0


class MarkerParams(StageParams):
    marker_dir: str
    unit_ids: list[str] = Field(default_factory=list, description="Units it acts on; empty: all")
    times: int = Field(1, ge=0, description="How often it acts per unit before it behaves; 0: always")


def _acts(params: MarkerParams, unit_id: str) -> bool:
    """True the first ``times`` calls on a unit (counted with marker files, across processes)."""
    if params.unit_ids and unit_id not in params.unit_ids:
        return False
    folder = Path(params.marker_dir)
    folder.mkdir(parents=True, exist_ok=True)
    count = len(list(folder.glob(f"{unit_id.replace('/', '_')}.*")))
    (folder / f"{unit_id.replace('/', '_')}.{count}").touch()
    return params.times == 0 or count < params.times


@register_stage("test_kill_actor")
class KillActor(Stage):
    """Kills its own worker process (no Python error reaches Ray) the first ``times`` calls on a unit."""

    Params = MarkerParams
    params: MarkerParams
    uses_model = True

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        if _acts(self.params, unit.unit.unit_id):
            os._exit(17)


@register_stage("test_crash_unit")
class CrashUnit(Stage):
    """Kills the worker on the named units for as long as ``marker_dir/broken`` exists."""

    Params = MarkerParams
    params: MarkerParams

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        if self.params.unit_ids and unit.unit.unit_id in self.params.unit_ids and \
                (Path(self.params.marker_dir) / "broken").exists():
            os._exit(19)


class NoiseParams(StageParams):
    calls_dir: str = Field(description="Each computed (not replayed) call leaves a file here")


@register_stage("test_random_model")
class RandomModel(Stage):
    """A model whose output differs on every call (os.urandom), behind the run's cache."""

    Params = NoiseParams
    params: NoiseParams
    uses_model = True

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        def compute(requests):
            Path(self.params.calls_dir).mkdir(parents=True, exist_ok=True)
            for request in requests:
                (Path(self.params.calls_dir) / f"{request['key']}.{os.urandom(4).hex()}").touch()
            return [{"noise": os.urandom(8).hex(), "pixels": np.frombuffer(os.urandom(12), dtype=np.uint8)}
                    for _ in requests]

        results = unit.cache.map([(r.seed, {"key": r.key, "caption": r.caption}) for r in records], compute)
        for record, result in zip(records, results, strict=True):
            record.description = f"{record.description} [{result['noise']}]"
            record.image = record.image.copy()
            record.image[0, :4] = result["pixels"].reshape(4, 3)


class SleepParams(StageParams):
    seconds_per_sample: float = Field(0.01, ge=0)


@register_stage("test_sleep")
class SleepStage(Stage):
    """Spends a fixed time per sample, for cost accounting and projections."""

    Params = SleepParams
    params: SleepParams
    uses_model = True

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        time.sleep(self.params.seconds_per_sample * len(records))
        done = time.time()
        for record in records:
            record.metadata[f"{self.id}_pid"] = os.getpid()
            record.metadata[f"{self.id}_done_at"] = done


@register_stage("test_clock")
class ClockStage(Stage):
    """A CPU stage that stamps when it saw each unit, to check when work after a model stage ran."""

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        now = time.time()
        for record in records:
            record.metadata[f"{self.id}_at"] = now


class RejectParams(StageParams):
    every: int = Field(3, ge=1)


@register_stage("test_reject_every")
class RejectEvery(Filter):
    """Rejects samples whose seed is divisible by ``every`` (about 1/every of them, deterministically)."""

    Params = RejectParams
    params: RejectParams

    def check(self, record: SampleRecord, scores: dict[str, float]) -> str | None:
        return "unlucky: seed divisible" if record.seed % self.params.every == 0 else None


@register_stage("test_pixel_probe")
class PixelProbe(Filter):
    """Notes a digest of the exact pixels it receives, to check images travel losslessly between stages."""

    def score(self, record: SampleRecord) -> dict[str, float]:
        import hashlib

        record.metadata["pixel_sha256"] = hashlib.sha256(record.image.tobytes()).hexdigest()
        record.metadata["pixel_shape"] = list(record.image.shape)
        return {"mean": float(record.image.mean())}

    def check(self, record: SampleRecord, scores: dict[str, float]) -> str | None:
        return None


class FamilyParams(StageParams):
    categories: list[str]


@register_stage("test_family_scores")
class FamilyScores(Stage):
    """Adds scores and metadata keys to some families only, as family-specific stages do."""

    Params = FamilyParams
    params: FamilyParams

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        for record in records:
            if record.category in self.params.categories:
                record.scores[f"{self.id}/special"] = 0.5 + (record.seed % 7) / 10
                record.metadata["special_note"] = {"family": record.category, "values": [1, 2, 3]}


@register_stage("test_placement_probe")
class PlacementProbe(Stage):
    """Records the Ray resources its actor got: GPU ids and its placement group's bundles."""

    uses_model = True

    def __init__(self, stage_id, params, context):
        super().__init__(stage_id, params, context)
        import ray
        from ray.util import get_current_placement_group

        group = get_current_placement_group()
        self.facts = {"gpu_ids": [str(g) for g in ray.get_gpu_ids()], "pid": os.getpid(),
                      "bundles": group.bundle_specs if group else None}

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        for record in records:
            record.metadata["placement"] = self.facts


class DedupParams(StageParams):
    last_words: int = Field(0, ge=0, description="Compare only the caption's last words (0: all of it)")


def caption_signature(caption: str, last_words: int) -> str:
    words = caption.lower().rstrip(".").split()
    return " ".join(words[-last_words:] if last_words else words)


@register_stage("test_caption_dedup")
class CaptionDedup(GlobalStage):
    """Run-wide exact dedup of captions (or of their last words): the smallest key of each group is kept."""

    Params = DedupParams
    params: DedupParams

    def signatures(self, records: list[SampleRecord], unit: UnitContext) -> list[bytes]:
        return [caption_signature(r.caption, self.params.last_words).encode() for r in records]

    def decide(self, signatures):
        first: dict[bytes, str] = {}
        removed = {}
        for key, signature in signatures:
            if signature in first:
                removed[key] = f"duplicate_caption: same as {first[signature]}"
            else:
                first[signature] = key
        return removed


# --- a shared model and the stages that call it ---------------------------------------------------------------

from pipeline.model_backend import ModelBackend, register_backend  # noqa: E402


class CounterParams(StageParams):
    marker_dir: str
    fail: bool = False
    seconds_per_batch: float = Field(0.05, ge=0)


@register_backend("test_counter")
class CounterBackend(ModelBackend):
    """Counts its loads and the batch sizes it serves (as files), and tags items deterministically."""

    Params = CounterParams
    params: CounterParams

    def __init__(self, params):
        super().__init__(params)
        if params.fail:
            raise FileNotFoundError("no weights at /models/missing")
        self.folder = Path(params.marker_dir)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"load.{os.getpid()}.{os.urandom(3).hex()}").touch()

    def tag(self, items: list[str]) -> list[str]:
        time.sleep(self.params.seconds_per_batch)
        (self.folder / f"batch.{len(items)}.{os.urandom(4).hex()}").touch()
        return [f"{item}!" for item in items]


class TaggerParams(StageParams):
    model: str


@register_stage("test_model_tagger")
class ModelTagger(Stage):
    """Calls a shared model on every record's caption."""

    Params = TaggerParams
    params: TaggerParams

    def process(self, records: list[SampleRecord], unit: UnitContext) -> None:
        tags = unit.models[self.params.model].call("tag", [r.caption for r in records])
        for record, tag in zip(records, tags, strict=True):
            record.metadata[self.id] = tag


@register_stage("test_unbuildable")
class Unbuildable(Filter):
    """A filter without its ``check``: it cannot be instantiated."""


@register_stage("test_actor_only_model")
class ActorOnlyModel(Filter):
    """Stands for a stage whose model loads only where its GPUs are: building it anywhere else raises."""

    uses_model = True

    def __init__(self, stage_id, params, context):
        raise RuntimeError("no GPU in this process")

    def check(self, record: SampleRecord, scores: dict[str, float]) -> str | None:
        return None
