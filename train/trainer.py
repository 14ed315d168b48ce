"""The training loop shared by one process, torchrun (DDP / FSDP2) and Ray Train.

One optimizer step = `accumulation` micro-batches per rank. The LM loss is normalised by the supervised tokens of
the whole step over every rank (counted before the backward passes), so gradient accumulation and data
parallelism give the same gradient as one big batch; the DSM terms are averaged per micro-batch.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from model.fusion import WEIGHTS_FILE, FusionModel
from model.loss import supervised_token_count
from train.answer_realignment import realign_answers
from train.binding_warmup import warm_up_binding
from train.checkpoint import (
    TrainerState,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from train.config import SourceSpec, TrainConfig, TrainConfigError, save_train_config
from train.distributed import (
    DistInfo,
    all_reduce_sum,
    broadcast_parameters,
    gather_objects,
    init_distributed,
    launched_distributed,
    make_strategy,
)
from train.flops import FusionFlops, peak_flops
from train.loader import LoaderPosition, ShardLoader, TrainBatch, bad_count
from train.metrics import METRICS_FILE, MetricsLogger
from train.modeling import build_model
from train.optim import build_optimizer, build_scheduler
from train.sources import Source, resolve_sources
from train.vision_warmup import warm_up_vision, warmup_examples

logger = logging.getLogger(__name__)

CONFIG_FILE = "train_config.yaml"


@dataclass
class TrainResult:
    out: Path
    checkpoint: Path  # the last checkpoint written (loads with FusionModel.from_pretrained)
    steps: int
    total_steps: int
    metrics: Path
    seconds: float
    is_main: bool = True


def with_data(config: TrainConfig, data: str | None) -> TrainConfig:
    """`--data GLOB` is the path of every source that names none (a mixture over the given dataset); a config
    whose sources all name their own path, or that has none, gets one source instead: the given dataset."""
    if data is None:
        return config
    sources = config.data.sources
    if any(spec.path is None for spec in sources):
        sources = [spec if spec.path else spec.model_copy(update={"path": data}) for spec in sources]
    else:
        sources = [SourceSpec(path=data)]
    return config.model_copy(update={"data": config.data.model_copy(update={"sources": sources})})


def train(config: TrainConfig, out: Path, *, data: str | None = None, resume: str | None = None,
          stop_after: int | None = None, info: DistInfo | None = None, warm_start: Path | None = None
          ) -> TrainResult:
    """Train `config` into `out`; `resume="latest"` continues the newest checkpoint there (or starts fresh).
    With `local_ranks` > 1 and no process group from torchrun or Ray, this command starts the ranks itself
    (train/local_ranks.py); `warm_start` is a model folder a new run starts from instead of warming up."""
    if config.local_ranks > 1 and info is None and not launched_distributed():
        from train.local_ranks import train_on_local_ranks

        return train_on_local_ranks(config, Path(out), data=data, resume=resume, stop_after=stop_after)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(config.deterministic or previous, warn_only=True)
    try:
        return _train(config, out, data=data, resume=resume, stop_after=stop_after, info=info,
                      warm_start=warm_start)
    finally:
        torch.use_deterministic_algorithms(previous)


def warm_start_model(config: TrainConfig, out: Path, *, data: str | None, resume: str | None, folder: Path
                     ) -> Path | None:
    """The model a new run's ranks start from, built and warmed up once in this process and saved in `folder`
    (written atomically; a folder left by an earlier attempt is reused); None when a checkpoint will be resumed or
    the config has no warm-up."""
    config = with_data(config, data)
    if resume and resolve_checkpoint(out, resume) is not None:
        return None
    if not (config.vision_warmup.steps or config.binding_warmup.steps):
        return None
    if (folder / WEIGHTS_FILE).is_file():
        logger.info("starting the ranks from the warmed model already in %s", folder)
        return folder
    info = init_distributed()  # one process here: train() starts the ranks only when nothing launched it
    sources, model = _run_folder_and_model(config, out, info)
    _warm_up(model, sources, config, out, info)
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    model.save_pretrained(partial)
    partial.replace(folder)
    return folder


def _run_folder_and_model(config: TrainConfig, out: Path, info: DistInfo) -> tuple[list[Source], FusionModel]:
    """The run folder with the resolved config (rank 0), the config's sources and its new model on this rank."""
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_train_config(config, out / CONFIG_FILE)
    sources = resolve_sources(config.data.sources, config.seed)
    return sources, build_model(config.model, seed=config.seed, sources=sources, out=out, info=info)


def _warm_up(model: FusionModel, sources: list[Source], config: TrainConfig, out: Path, info: DistInfo) -> None:
    """The configured warm-ups of a new run: the vision tower, then the decoder's option lookup (the vision warm-up
    after it undid the lookup: the letter matched the written option text 11-32% of the time for counts and colours,
    73-82% before), then the projector realigned to the output path the lookup's training moved. Every rank warms
    the same way from the same seed; rank 0's warmed modules are then the ones all ranks keep."""
    progress = config.log.progress and info.is_main
    result_dir = out if info.is_main else None
    # read from the shards once: the realignment trains on the vision warm-up's examples
    examples_read = (warmup_examples(model, sources, config.vision_warmup.max_images)
                     if config.vision_warmup.steps else None)
    if config.vision_warmup.steps:
        warm_up_vision(model, sources, config.vision_warmup, config.seed, result_dir, progress=progress,
                       examples_read=examples_read)
        broadcast_parameters(model)
    if config.binding_warmup.steps:
        warm_up_binding(model, sources, config.binding_warmup, config.seed, result_dir, progress=progress,
                        form=config.data.multiple_choice_answer)
        broadcast_parameters(model)
    if config.vision_warmup.realign_steps:
        realign_answers(model, sources, config.vision_warmup, config.seed, result_dir, progress=progress,
                        examples_read=examples_read)
        broadcast_parameters(model)


def _train(config: TrainConfig, out: Path, *, data: str | None, resume: str | None, stop_after: int | None,
           info: DistInfo | None, warm_start: Path | None) -> TrainResult:
    started = time.perf_counter()
    info = info or init_distributed()
    _quiet_other_ranks(info)
    config = with_data(config, data)
    out = Path(out)
    bf16 = _use_bf16(config, info)
    sources, model = _run_folder_and_model(config, out, info)
    checkpoint = resolve_checkpoint(out, resume) if resume else None
    if checkpoint is None and warm_start is not None:
        safetensors.torch.load_model(model, str(warm_start / WEIGHTS_FILE), device=str(info.device))
        logger.info("starting from the warmed model in %s", warm_start)
    elif checkpoint is None:
        _warm_up(model, sources, config, out, info)
    strategy = make_strategy(config.strategy, info, bf16)
    # Same modules on every rank each step (text-only batches included), which DDP and FSDP need; alone, a batch
    # without text-only samples would still run the ViT on a placeholder token every micro-batch (~1.5% of a step).
    model.uniform_execution = strategy.name != "single"
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    builder = model.sequence_builder
    builder.verify_label_masks()
    max_length = config.max_length or model.config.sequence.max_length

    wrapped = strategy.wrap(model)
    optimizer = build_optimizer(model, config.optim)
    accumulation = config.batch.accumulation(info.world_size)
    if config.data.length_group > 1 and accumulation * info.world_size == 1:
        logger.warning("data.length_group=%d with one micro-batch per optimizer step: length-sorted micro-batches "
                       "hold samples of one length band (often one family), so every update sees one kind of "
                       "sample; use several micro-batches per step (batch.micro_batch < batch.global_batch)",
                       config.data.length_group)
    epoch_samples = sum(source.num_samples for source in sources)
    steps_per_epoch = max(1, math.ceil(epoch_samples / config.batch.global_batch))
    total_steps = config.total_steps(steps_per_epoch)
    scheduler = build_scheduler(optimizer, config.optim, total_steps)
    loader = ShardLoader(sources, builder, config.data, seed=config.seed, micro_batch=config.batch.micro_batch,
                         batches_per_epoch=steps_per_epoch * accumulation, max_length=max_length, rank=info.rank,
                         world_size=info.world_size)

    state = TrainerState(total_steps=total_steps, world_size=info.world_size, strategy=strategy.name,
                         config_name=config.name)
    position = loader.new_position(0)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, info=info, strategy=strategy, model=wrapped, optimizer=optimizer)
        scheduler.load_state_dict(state.scheduler)
        position = LoaderPosition.from_dict(state.loader[info.rank])
    logger.info("training %s with %s on %d rank(s): %d samples per epoch, %d steps per epoch, %d steps "
                "(global batch %d = %d micro x %d ranks x %d accumulation), %s", config.name, strategy.name,
                info.world_size, epoch_samples, steps_per_epoch, total_steps, config.batch.global_batch,
                config.batch.micro_batch, info.world_size, accumulation, "bf16 autocast" if bf16 else "float32")

    metrics = MetricsLogger(out, enabled=info.is_main, total_steps=total_steps, start_step=state.step,
                            tensorboard=config.log.tensorboard, progress=config.log.progress)
    flops = FusionFlops.of(model)
    peak, peak_source = peak_flops(info.device)
    logger.info("MFU is measured against %.2f TFLOP/s per device (%s)", peak / 1e12, peak_source)
    batches = loader.epoch(position.epoch, position)
    last_saved = state.step if checkpoint is not None else -1
    final = checkpoint
    stop = total_steps if stop_after is None else min(total_steps, stop_after)
    try:
        while state.step < stop:
            step_start = time.perf_counter()
            micro: list[TrainBatch] = []
            for _ in range(accumulation):
                item = next(batches, None)
                if item is None:
                    raise RuntimeError("the loader ended before the epoch did (with_epoch count too small)")
                position.consumed(item.worker, item.position)
                micro.append(item)
            step_lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}  # the lr of this step
            record = _step(micro, wrapped, model, strategy, optimizer, config, info, flops)
            scheduler.step()
            state.step += 1
            state.samples += record["samples"]
            state.tokens += record["tokens"]
            if position.batches >= loader.batches_per_epoch:  # next step starts the next epoch
                position = loader.new_position(position.epoch + 1)
                batches = loader.epoch(position.epoch, position)
            seconds = time.perf_counter() - step_start
            record.update(_rates(record, seconds, peak, info))
            record.update(step=state.step, epoch=position.epoch + position.batches / loader.batches_per_epoch,
                          lr=step_lrs, step_seconds=seconds)
            record.update(_data_counts(position, loader.num_workers))
            if state.step % config.log.every_steps == 0 or state.step in (1, stop):
                metrics.log(_flatten(record))
            metrics.progress(1, record["loss"], record["samples_per_second"], record["tokens_per_second"])
            every = config.checkpoint.every_steps
            if (every and state.step % every == 0) or state.step == stop:
                state.scheduler = scheduler.state_dict()
                final = save_checkpoint(out, info=info, strategy=strategy, model=wrapped, optimizer=optimizer,
                                        state=state, loader_position=position.to_dict(),
                                        keep=config.checkpoint.keep)
                last_saved = state.step
    finally:
        metrics.close()
    if last_saved != state.step or final is None:
        raise RuntimeError("training ended without a checkpoint of its last step")
    return TrainResult(out, final, state.step, total_steps, out / METRICS_FILE, time.perf_counter() - started,
                       info.is_main)


def _step(micro: list[TrainBatch], wrapped: torch.nn.Module, model, strategy, optimizer, config: TrainConfig,
          info: DistInfo, flops: FusionFlops) -> dict[str, Any]:
    device = info.device
    local_supervised = sum(int(supervised_token_count(item.batch.labels)) for item in micro)
    supervised = all_reduce_sum(torch.tensor(float(local_supervised), device=device))
    lm_sum = torch.zeros((), device=device)
    dsm_sum = torch.zeros((), device=device)
    step_flops = 0.0
    for index, item in enumerate(micro):
        batch = item.batch.to(device)
        with strategy.accumulating(wrapped, sync=index == len(micro) - 1), strategy.autocast():
            output = wrapped(batch, loss_chunk_tokens=config.loss_chunk_tokens)
            # DDP and FSDP average gradients over ranks: scale so the sum over ranks is the global token mean.
            loss = output.lm_loss_sum * info.world_size / supervised
            if output.dsm_text is not None:
                dsm = model.config.dsm_weight * (output.dsm_text + output.dsm_image)
                loss = loss + dsm / len(micro)
                dsm_sum += dsm.detach() / len(micro)
        loss.backward()
        lm_sum += output.lm_loss_sum.detach()
        step_flops += flops.step_flops(batch)
    grad_norm = float("nan")
    if config.optim.max_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), config.optim.max_grad_norm)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    totals = all_reduce_sum(torch.stack([
        lm_sum, dsm_sum, torch.tensor(float(sum(i.num_samples for i in micro)), device=device),
        torch.tensor(float(sum(i.num_tokens for i in micro)), device=device),
        torch.tensor(step_flops, device=device, dtype=torch.float64).float(),
    ]))
    lm_loss = float(totals[0] / supervised)
    dsm_mean = float(totals[1]) / info.world_size
    return {"loss": lm_loss + dsm_mean, "lm_loss": lm_loss, "dsm": dsm_mean, "grad_norm": grad_norm,
            "samples": int(totals[2]), "tokens": int(totals[3]), "flops": float(totals[4]),
            "supervised_tokens": int(supervised), "latent_count": micro[-1].batch.latent_count}


def _rates(record: dict[str, Any], seconds: float, peak: float, info: DistInfo) -> dict[str, float]:
    seconds = max(seconds, 1e-9)
    per_device = record["flops"] / seconds / info.world_size
    return {"samples_per_second": record["samples"] / seconds, "tokens_per_second": record["tokens"] / seconds,
            "tflops": per_device / 1e12, "mfu": per_device / peak if peak and math.isfinite(peak) else float("nan")}


def _data_counts(position: LoaderPosition, num_workers: int) -> dict[str, Any]:
    counts = _sum_counts(gather_objects(dict(position.counts())))
    return {"data": {**counts, "bad": bad_count(counts)}}


def _sum_counts(per_rank: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in per_rank:
        for name, value in counts.items():
            total[name] = total.get(name, 0) + value
    return total


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}/"))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _use_bf16(config: TrainConfig, info: DistInfo) -> bool:
    if config.precision == "bf16":
        if info.device.type != "cuda":
            raise TrainConfigError("precision: bf16 autocast needs a CUDA device; use auto or float32 on CPU")
        return True
    return config.precision == "auto" and info.device.type == "cuda"


def _quiet_other_ranks(info: DistInfo) -> None:
    if not info.is_main:
        for name in ("train", "model", "transformers"):
            logging.getLogger(name).setLevel(logging.WARNING)
