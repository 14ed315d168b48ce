"""Shared models: one engine per replica, called by every stage that names it.

On Ray each model named under ``models:`` gets ``replicas`` long-lived actors, started before any unit runs and
stopped after the run; each reserves the model's resources (GPUs, or a tensor-parallel placement group) and
serves the calls of every stage and unit in batches of up to ``batch_size`` items. A batch holds the items of
one call only, cut the same way in every run, because a padded batch's numerics depend on all its rows (measured
with transformers on CPU: a row's logits differ by ~1e-7 with other batch-mates, which can flip a sampled token);
with ``batch_across_calls`` it is filled from concurrent calls (waiting ``batch_wait_ms`` for more), trading that
run-to-run identity for fuller batches. In-process runs load each model once per process. Either way a stage calls
``unit.models[name].call(method, items)`` and gets one result per item; the model seconds each call used are
charged to the calling stage, so its GPU-seconds are the model's, not its waiting time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pipeline.config import ModelSpec, RunConfig, import_plugins
from pipeline.stage import RunContext

logger = logging.getLogger(__name__)
_LOCAL_BACKENDS: dict[str, Any] = {}
_LOCAL_LOCK = threading.Lock()


class ModelLoadError(RuntimeError):
    """A shared model could not be loaded; names the model, its backend and the cause."""


@dataclass
class ModelUsage:
    """What one stage's calls on one unit cost: model seconds (per replica, shared out by batch share)."""

    seconds: float = 0.0
    gpu_seconds: float = 0.0
    items: int = 0


def _spec_key(name: str, spec: dict[str, Any]) -> str:
    return f"{name}:{json.dumps(spec, sort_keys=True)}"


def local_backend(name: str, spec_json: dict[str, Any]) -> Any:
    """The model loaded in this process (once, whichever stage asks first)."""
    key = _spec_key(name, spec_json)
    with _LOCAL_LOCK:
        if key not in _LOCAL_BACKENDS:
            spec = ModelSpec.model_validate(spec_json)
            _LOCAL_BACKENDS[key] = _load(name, spec)
        return _LOCAL_BACKENDS[key]


def _load(name: str, spec: ModelSpec) -> Any:
    started = time.perf_counter()
    try:
        backend = spec.backend_class()(spec.typed_params())
    except Exception as error:
        raise ModelLoadError(f"model {name!r} ({spec.backend}) failed to load: {type(error).__name__}: {error}") \
            from error
    logger.info("model %r (%s) loaded in %.1f s", name, spec.backend, time.perf_counter() - started)
    return backend


def _invoke(backend: Any, method: str, items: list[Any]) -> list[Any]:
    if method.startswith("_") or not callable(getattr(backend, method, None)):
        raise AttributeError(f"model backend {type(backend).__name__} has no method {method!r}")
    results = getattr(backend, method)(items)
    if len(results) != len(items):
        raise ValueError(f"{type(backend).__name__}.{method} returned {len(results)} results for {len(items)} items")
    return list(results)


class ModelClient:
    def __init__(self, name: str, context: RunContext, usage: ModelUsage, unit_id: str) -> None:
        self.name = name
        self.context = context
        self.usage = usage
        self.unit_id = unit_id
        spec = ModelSpec.model_validate(context.model_specs[name])
        self.gpus = spec.resources.gpus_reserved

    def call(self, method: str, items: list[Any]) -> list[Any]:
        if not items:
            return []
        services = self.context.model_services
        if services is None:
            started = time.perf_counter()
            results = _invoke(local_backend(self.name, self.context.model_specs[self.name]), method, list(items))
            seconds = time.perf_counter() - started
        else:
            import ray

            replicas = services[self.name]
            replica = replicas[zlib.crc32(self.unit_id.encode()) % len(replicas)]
            results, seconds = ray.get(replica.call.remote(method, list(items)))
        self.usage.seconds += seconds
        self.usage.gpu_seconds += seconds * self.gpus
        self.usage.items += len(items)
        return results


class ModelAccess(Mapping):
    """``unit.models``: the shared models a stage declared, each a ``ModelClient``."""

    def __init__(self, context: RunContext, names: list[str], usage: ModelUsage, unit_id: str) -> None:
        self._clients = {name: ModelClient(name, context, usage, unit_id) for name in names}

    def __getitem__(self, name: str) -> ModelClient:
        try:
            return self._clients[name]
        except KeyError:
            raise KeyError(f"this stage did not declare model {name!r} (it declared: "
                           f"{', '.join(self._clients) or 'none'}); name it in the stage's params") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)


class ModelServer:
    """One replica of a shared model, as an async Ray actor: concurrent calls are gathered into batches."""

    def __init__(self, name: str, spec_json: dict[str, Any], plugins: list[str]) -> None:
        import_plugins(plugins)
        self.spec = ModelSpec.model_validate(spec_json)
        self.name = name
        self.backend = _load(name, self.spec)
        self.thread = ThreadPoolExecutor(max_workers=1)  # models are not thread-safe: one batch at a time
        self.pending: dict[str, list[tuple[list[Any], asyncio.Future]]] = {}
        self.draining: set[str] = set()
        self.batch_sizes: list[int] = []

    async def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "model": self.name}

    async def stats(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "batch_sizes": list(self.batch_sizes)}

    async def call(self, method: str, items: list[Any]) -> tuple[list[Any], float]:
        future = asyncio.get_running_loop().create_future()
        self.pending.setdefault(method, []).append((items, future))
        if method not in self.draining:
            self.draining.add(method)
            asyncio.get_running_loop().create_task(self._drain(method))
        return await future

    async def _drain(self, method: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.spec.batch_across_calls:
                await asyncio.sleep(self.spec.batch_wait_ms / 1000)  # let concurrent callers join the batch
            while self.pending.get(method):
                jobs, self.pending[method] = self.pending[method], []
                owners = [(j, item) for j, (chunk, _) in enumerate(jobs) for item in chunk]
                results: list[list[Any]] = [[] for _ in jobs]
                seconds = [0.0] * len(jobs)
                errors: dict[int, BaseException] = {}
                for batch in self._batches(owners):
                    await self._run_batch(loop, method, batch, results, seconds, errors)
                for j, (_, future) in enumerate(jobs):
                    if j in errors:
                        future.set_exception(errors[j])
                    else:
                        future.set_result((results[j], seconds[j]))
        finally:
            self.draining.discard(method)
            if self.pending.get(method):  # calls that arrived as the loop ended
                self.draining.add(method)
                loop.create_task(self._drain(method))

    def _batches(self, owners: list[tuple[int, Any]]) -> Iterator[list[tuple[int, Any]]]:
        """(caller, item) pairs cut into backend batches: per call unless ``batch_across_calls``."""
        size = self.spec.batch_size
        if self.spec.batch_across_calls:
            groups = [owners]
        else:
            groups = [list(g) for _, g in itertools.groupby(owners, key=lambda owner: owner[0])]
        for group in groups:
            for start in range(0, len(group), size):
                yield group[start:start + size]

    async def _run_batch(self, loop, method, batch, results, seconds, errors) -> None:
        live = [(j, item) for j, item in batch if j not in errors]
        if not live:
            return
        started = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self.thread, _invoke, self.backend, method, [i for _, i in live])
        except Exception:  # keep one caller's bad item from failing the others: retry per caller
            for j in sorted({j for j, _ in live}):
                mine = [i for k, i in live if k == j]
                started_one = time.perf_counter()
                try:
                    outputs = await loop.run_in_executor(self.thread, _invoke, self.backend, method, mine)
                except Exception as error:
                    errors[j] = error
                    continue
                results[j].extend(outputs)
                seconds[j] += time.perf_counter() - started_one
            return
        elapsed = time.perf_counter() - started
        self.batch_sizes.append(len(live))
        for (j, _), output in zip(live, outputs, strict=True):
            results[j].append(output)
            seconds[j] += elapsed / len(live)


def _root_cause(error: BaseException) -> str:
    """The original error of a replica that died while loading, without Ray's wrapping traceback."""
    text = str(getattr(error, "cause", None) or error)
    marker = "ModelLoadError: "
    if marker in text:
        text = text.rsplit(marker, 1)[1]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[-1].split())[:1000] if lines else type(error).__name__


@dataclass
class RunningServices:
    handles: dict[str, list[Any]]
    placement_groups: list[Any]

    def stop(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for replicas in self.handles.values():
            for handle in replicas:
                ray.kill(handle)
        for group in self.placement_groups:
            remove_placement_group(group)


def start_model_services(config: RunConfig) -> RunningServices:
    """Start every replica of every model the stages use, and wait until each has loaded (or failed to)."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    handles: dict[str, list[Any]] = {}
    groups = []
    server = ray.remote(ModelServer)
    for name in config.models_in_use():
        spec = config.models[name]
        r = spec.resources
        options: dict[str, Any] = {"num_cpus": r.num_cpus, "max_concurrency": r.max_concurrency, "max_restarts": -1,
                                   "max_task_retries": config.faults.unit_retries}
        if r.tensor_parallel_size > 1:
            bundles = [{"GPU": 1.0, "CPU": r.num_cpus}] + [{"GPU": 1.0}] * (r.tensor_parallel_size - 1)
        if r.accelerator_type:
            options["accelerator_type"] = r.accelerator_type
        if r.runtime_env:
            options["runtime_env"] = r.runtime_env
        handles[name] = []
        for _ in range(r.replicas):
            if r.tensor_parallel_size > 1:
                group = placement_group(bundles, strategy="STRICT_PACK")
                groups.append(group)
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)
            elif r.num_gpus:
                options["num_gpus"] = r.num_gpus
            handles[name].append(server.options(**options).remote(name, spec.model_dump(mode="json"), config.plugins))
    running = RunningServices(handles, groups)
    for name, replicas in handles.items():
        try:
            ray.get([h.ready.remote() for h in replicas])
        except ray.exceptions.RayActorError as error:
            running.stop()
            raise ModelLoadError(f"model {name!r} ({config.models[name].backend}) failed to load on its replica: "
                                 f"{_root_cause(error)}") from None
        logger.info("model %r: %d replica(s) ready", name, len(replicas))
    return running
