"""What each stage's workers reserve on Ray, and the preflight that checks the cluster can hold it.

A model stage runs on a pool of actors; each actor reserves ``num_cpus``, ``num_gpus`` (fractions share a
GPU) and, with ``tensor_parallel_size`` > 1, a placement group of that many GPU bundles on one node for the
model's workers (e.g. vLLM's tensor-parallel ranks). Ray Data runs every pool at once, so the sum of the
pools' minimum sizes must fit; otherwise Ray would wait silently for resources that never come.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import ModelResources, ModelSpec, StageResources, StageSpec

WRITER_CPUS = 1.0


@dataclass(frozen=True)
class PoolNeed:
    stage_id: str
    actors: int
    per_actor: dict[str, float]
    tensor_parallel_size: int = 1

    def total(self, resource: str) -> float:
        return self.actors * self.per_actor.get(resource, 0.0)


@dataclass
class ClusterResources:
    totals: dict[str, float]
    nodes: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def from_ray(cls) -> ClusterResources:
        import ray

        nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
        return cls(dict(ray.cluster_resources()), nodes)

    def describe(self) -> str:
        gpus = self.totals.get("GPU", 0)
        accelerators = sorted(k.split(":", 1)[1] for k in self.totals if k.startswith("accelerator_type:"))
        text = f"{self.totals.get('CPU', 0):g} CPUs and {gpus:g} GPUs on {len(self.nodes) or 1} node(s)"
        return text + (f" (accelerator types: {', '.join(accelerators)})" if accelerators else "")


def actor_resources(resources: StageResources | ModelResources) -> dict[str, float]:
    need = {"CPU": resources.num_cpus, "GPU": resources.gpus_reserved}
    if resources.accelerator_type:
        need[f"accelerator_type:{resources.accelerator_type}"] = 0.001
    return need


def pool_needs(specs: list[StageSpec], models: dict[str, ModelSpec] | None = None) -> list[PoolNeed]:
    needs = [PoolNeed(f"stage {spec.stage_id!r}", spec.resources.pool_bounds()[0], actor_resources(spec.resources),
                      spec.resources.tensor_parallel_size)
             for spec in specs if spec.stage_class().uses_model]
    needs += [PoolNeed(f"model {name!r}", spec.resources.replicas, actor_resources(spec.resources),
                       spec.resources.tensor_parallel_size) for name, spec in (models or {}).items()]
    return needs


def preflight_problems(specs: list[StageSpec], cluster: ClusterResources,
                       models: dict[str, ModelSpec] | None = None) -> list[str]:
    """Every reason the stages' pools and the shared models' replicas cannot all start on this cluster."""
    problems = []
    needs = pool_needs(specs, models)
    task_cpus = max([s.resources.num_cpus for s in specs if not s.stage_class().uses_model] + [WRITER_CPUS])
    for need in needs:
        asked = ", ".join(f"{k}={v:g}" for k, v in need.per_actor.items() if v)
        for resource, amount in need.per_actor.items():
            if amount and need.total(resource) > cluster.totals.get(resource, 0.0) + 1e-9:
                what = resource.removeprefix("accelerator_type:") if resource.startswith("accelerator_type:") else resource
                problems.append(
                    f"{need.stage_id} asks for {need.actors} {'actor(s)' if need.stage_id.startswith('stage') else 'replica(s)'} with {asked}"
                    + (f" (tensor_parallel_size={need.tensor_parallel_size})" if need.tensor_parallel_size > 1 else "")
                    + f": {what} {need.total(resource):g} needed, the cluster has {cluster.describe()}"
                )
                break
        else:
            if need.tensor_parallel_size > 1 and cluster.nodes and max(
                    n.get("GPU", 0) for n in cluster.nodes) < need.tensor_parallel_size:
                problems.append(f"{need.stage_id} needs {need.tensor_parallel_size} GPUs on one node "
                                f"(tensor_parallel_size); no node has that many ({cluster.describe()})")
    for resource in ("CPU", "GPU"):
        total = sum(n.total(resource) for n in needs) + (task_cpus if resource == "CPU" else 0)
        if total > cluster.totals.get(resource, 0.0) + 1e-9 and not any(resource in p for p in problems):
            pools = ", ".join(f"{n.stage_id.split(' ', 1)[1].strip(chr(39))}: {n.total(resource):g}" for n in needs
                              if n.total(resource))
            problems.append(f"the stages' pools run at once and need {total:g} {resource} together ({pools}"
                            f"{', plus ' + format(task_cpus, 'g') + ' for CPU tasks' if resource == 'CPU' else ''}); "
                            f"the cluster has {cluster.describe()}")
    return problems


def ray_map_args(spec: StageSpec, unit_retries: int, placement_groups: list[Any]) -> dict[str, Any]:
    """Keyword arguments of ``map_batches`` for a model stage's actor pool; placement groups it creates are
    appended to ``placement_groups`` for the caller to remove when the pool is done."""
    from ray.data import ActorPoolStrategy

    r = spec.resources
    low, high = r.pool_bounds()
    threads = {"max_concurrent_calls_per_actor": r.max_concurrency, "enable_true_multi_threading": True} \
        if r.max_concurrency else {}
    # One unit queued per actor beyond those it runs, so the next starts as one ends (the driver's scheduling loop
    # noticed a finished call up to 0.1 s late: 1.7 s of a 33 s model-bound run). Ray retries a dead actor's queued
    # units too; the actor keeps each unit's own death budget (pipeline/executors.py, _SegmentActor), so Ray's
    # budget only has to cover the deaths of the units ahead of it as well.
    in_flight = (r.max_concurrency or 1) + 1
    args: dict[str, Any] = {
        "compute": ActorPoolStrategy(min_size=low, max_size=high, max_tasks_in_flight_per_actor=in_flight,
                                     **threads),
        "num_cpus": r.num_cpus,
        # Restart a dead actor always; retry the units it held a bounded number of times. (Ray 2.60 has no
        # named parameter for these yet, hence the pin below 2.64 in pyproject.toml.)
        "max_restarts": -1,
        "max_task_retries": in_flight * (unit_retries + 1),
    }
    if r.tensor_parallel_size > 1:
        args["ray_remote_args_fn"] = tensor_parallel_placement(r, placement_groups)
    elif r.num_gpus:
        args["num_gpus"] = r.num_gpus
    if r.accelerator_type:
        args["accelerator_type"] = r.accelerator_type
    if r.runtime_env:
        args["runtime_env"] = r.runtime_env
    return args


def tensor_parallel_placement(resources: StageResources, created: list[Any]) -> Callable[[], dict[str, Any]]:
    """A function Ray Data calls (in the driver) per actor: a placement group of ``tensor_parallel_size`` GPU
    bundles on one node, which the actor's child tasks (the model's parallel workers) are scheduled into."""

    def placement() -> dict[str, Any]:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundles = [{"GPU": 1.0, "CPU": resources.num_cpus}] + [{"GPU": 1.0}] * (resources.tensor_parallel_size - 1)
        group = placement_group(bundles, strategy="STRICT_PACK")
        created.append(group)
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)}

    return placement
