"""Process groups and parallel strategies: one process (single), DDP, and FSDP2, as classes sharing one loop.

The process group comes from torchrun's environment (RANK, WORLD_SIZE, ...) or is already initialised (Ray Train's
TorchTrainer sets it up before calling the loop). NCCL on CUDA, gloo on CPU.

Strategies differ in how the model is wrapped, how gradient sync is skipped during accumulation, and how weights
and optimizer state are saved and loaded:
  * single / DDP: rank 0 writes `model.safetensors` (`FusionModel.save_pretrained`) and `optimizer.pt`;
  * FSDP2 (`fully_shard` per decoder layer, ViT block and interaction layer, then the whole model as root):
    torch distributed checkpoint writes the weights as safetensors (every rank its shard, then consolidated,
    through `HuggingFaceStorageWriter`) and the optimizer state sharded (`optimizer/`).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from model.fusion import FusionModel, weight_files

logger = logging.getLogger(__name__)

OPTIMIZER_FILE = "optimizer.pt"
OPTIMIZER_DIR = "optimizer"


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_distributed() -> bool:
    """Whether torchrun or Ray Train started this process (as one rank of one or more)."""
    return dist.is_initialized() or "WORLD_SIZE" in os.environ


def init_distributed() -> DistInfo:
    """Join the process group of torchrun or Ray Train (or run as one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_initialized() and world_size > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        rank, world_size = 0, 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistInfo(rank, world_size, local_rank, device)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
    return value


def gather_objects(obj: object) -> list[object]:
    if not dist.is_initialized():
        return [obj]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Rank 0's parameter values on every rank (before a strategy wraps or shards the module)."""
    if dist.is_initialized():
        with torch.no_grad():
            for parameter in module.parameters():
                dist.broadcast(parameter.data, src=0)


def broadcast_object(obj: object) -> object:
    if not dist.is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


class Strategy(ABC):
    name: str

    def __init__(self, info: DistInfo, bf16: bool) -> None:
        self.info = info
        self.bf16 = bf16

    @abstractmethod
    def wrap(self, model: FusionModel) -> nn.Module: ...

    def unwrap(self, wrapped: nn.Module) -> FusionModel:
        return wrapped  # type: ignore[return-value]

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast over fp32 master weights on CUDA; nothing on CPU (float32 there)."""
        if self.bf16:
            return torch.autocast(device_type=self.info.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def accumulating(self, wrapped: nn.Module, sync: bool) -> Iterator[None]:
        """Skip the gradient all-reduce on micro-batches that are not the last of a step."""
        yield

    def save_model(self, wrapped: nn.Module, directory: Path) -> None:
        if self.info.is_main:
            self.unwrap(wrapped).save_pretrained(directory)

    def load_model(self, wrapped: nn.Module, directory: Path) -> None:
        model = self.unwrap(wrapped)
        model.load_weights(weight_files(directory), next(model.parameters()).device)

    def save_optimizer(self, wrapped: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
        if self.info.is_main:
            torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)

    def load_optimizer(self, wrapped: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
        state = torch.load(directory / OPTIMIZER_FILE, map_location=self.info.device, weights_only=True)
        optimizer.load_state_dict(state)


class SingleStrategy(Strategy):
    name = "single"

    def wrap(self, model: FusionModel) -> nn.Module:
        return model


class DdpStrategy(Strategy):
    """Every rank runs the same modules each step (FusionModel.uniform_execution), so no unused parameters."""

    name = "ddp"

    def wrap(self, model: FusionModel) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.info.local_rank] if self.info.device.type == "cuda" else None
        # The model's buffers (rotary frequencies, position ids) are constants: broadcasting them before every
        # forward would only add a wait on the slowest rank per micro-batch.
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False,
                                       broadcast_buffers=False)

    def unwrap(self, wrapped: nn.Module) -> FusionModel:
        return wrapped.module

    @contextlib.contextmanager
    def accumulating(self, wrapped: nn.Module, sync: bool) -> Iterator[None]:
        with contextlib.nullcontext() if sync else wrapped.no_sync():
            yield


class FsdpStrategy(Strategy):
    """FSDP2: one unit per decoder layer, ViT block and interaction layer, the rest in the root unit."""

    name = "fsdp"

    def wrap(self, model: FusionModel) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(self.info.device.type, (self.info.world_size,))
        kwargs = {"mesh": mesh}
        if self.bf16:  # fp32 sharded master weights, bf16 compute, fp32 gradient reduction
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        units = [*model.language_model.model.layers, *model.vision.tower.encoder.layers]
        if model.card is not None:
            units += list(model.card.layers)
        for unit in units:
            fully_shard(unit, **kwargs)
        fully_shard(model, **kwargs)
        logger.info("FSDP2: %d units + the root, over %d ranks", len(units), self.info.world_size)
        return model

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the mixed-precision policy casts

    @contextlib.contextmanager
    def accumulating(self, wrapped: nn.Module, sync: bool) -> Iterator[None]:
        wrapped.set_requires_gradient_sync(sync)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)

    def save_model(self, wrapped: nn.Module, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import HuggingFaceStorageWriter
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(wrapped)
        writer = HuggingFaceStorageWriter(str(directory), save_distributed=True, enable_consolidation=True)
        dcp.save(state, storage_writer=writer)
        if self.info.is_main:
            model = self.unwrap(wrapped)
            model.saved_config().to_json(directory / "config.json")
            if model.tokenizer is not None:
                model.tokenizer.save_pretrained(directory / "tokenizer")

    def load_model(self, wrapped: nn.Module, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import HuggingFaceStorageReader
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        state = get_model_state_dict(wrapped)
        dcp.load(state, storage_reader=HuggingFaceStorageReader(str(directory)))
        set_model_state_dict(wrapped, state)

    def save_optimizer(self, wrapped: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        dcp.save({"optimizer": get_optimizer_state_dict(wrapped, optimizer)},
                 checkpoint_id=str(directory / OPTIMIZER_DIR))

    def load_optimizer(self, wrapped: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        state = {"optimizer": get_optimizer_state_dict(wrapped, optimizer)}
        dcp.load(state, checkpoint_id=str(directory / OPTIMIZER_DIR))
        set_optimizer_state_dict(wrapped, optimizer, state["optimizer"])


STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (SingleStrategy, DdpStrategy, FsdpStrategy)}


def make_strategy(name: str, info: DistInfo, bf16: bool) -> Strategy:
    if name == "auto":
        name = "ddp" if info.distributed else "single"
    if name == "single" and info.distributed:
        raise ValueError(f"strategy 'single' cannot run on {info.world_size} ranks: use ddp or fsdp")
    return STRATEGIES[name](info, bf16)
