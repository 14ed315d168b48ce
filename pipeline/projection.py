"""`fusion plan`: what a config will run, and what a target number of accepted samples will cost.

The projection scales measured figures, never guesses: per stage, its seconds per input sample and the share
of samples that reach it, from a small calibration run of the same config (or an earlier run's manifest).
Wall time assumes the run is limited by its slowest pool: CPU stages and the writer share the CPU slots, and
each model stage has its actor pool's maximum size of workers.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipeline.config import RunConfig
from pipeline.indexing import load_manifest
from pipeline.planning import plan_round, split_targets
from pipeline.unit_writer import WRITER_STAGE


def describe_plan(config: RunConfig) -> str:
    targets = split_targets({c: v.split_sizes() for c, v in config.categories.items()},
                            config.dataset.max_attempts_factor)
    units = plan_round(targets, {}, config.seed, config.dataset.unit_size, 0)
    by_split: dict[str, int] = {}
    for target in targets:
        by_split[target.split] = by_split.get(target.split, 0) + target.target
    lines = [
        f"plan of {config.name!r}: {sum(t.target for t in targets):,} accepted samples wanted "
        f"({', '.join(f'{s} {n:,}' for s, n in by_split.items())}) in {len(config.categories)} categories",
        f"  round 0: {len(units)} work units of up to {config.dataset.unit_size} samples; top-up rounds try at most "
        f"{config.dataset.max_attempts_factor:g}x the target; shards of {config.dataset.shard_size} accepted samples, "
        f"images as {config.dataset.image_format}",
        "",
        f"  {'stage':<22}{'kind':<20}{'role':<11}{'runs as':<22}{'each worker reserves':<34}pool",
    ]
    for spec in config.stages:
        r = spec.resources
        model = spec.stage_class().uses_model
        reserves = [f"{r.num_cpus:g} CPU"]
        if r.gpus_reserved:
            reserves.append(f"{r.gpus_reserved:g} GPU" + (f" (tensor parallel {r.tensor_parallel_size})"
                                                          if r.tensor_parallel_size > 1 else ""))
        if r.accelerator_type:
            reserves.append(r.accelerator_type)
        low, high = r.pool_bounds()
        pool = (f"{low} actor(s)" if low == high else f"{low}-{high} actors") if model else (
            f"at most {r.concurrency} tasks" if isinstance(r.concurrency, int) else "one task per free CPU slot")
        if model and r.max_concurrency:
            pool += f", {r.max_concurrency} calls each"
        lines.append(f"  {spec.stage_id:<22}{spec.name:<20}{spec.stage_class().role:<11}"
                     f"{'actor pool (model)' if model else 'Ray tasks':<22}{', '.join(reserves):<34}{pool}")
    lines.append(f"  {WRITER_STAGE:<22}{'':<20}{'writer':<11}{'Ray tasks':<22}{'1 CPU':<34}one task per free CPU slot")
    if config.models:
        lines += ["", f"  {'shared model':<22}{'backend':<20}{'used by':<33}{'each replica reserves':<34}replicas"]
        for name, spec in config.models.items():
            users = [s.stage_id for s in config.stages if name in s.stage_class().models_used(s.typed_params())]
            r = spec.resources
            reserves = f"{r.num_cpus:g} CPU" + (f", {r.gpus_reserved:g} GPU" if r.gpus_reserved else "") + (
                f" (tensor parallel {r.tensor_parallel_size})" if r.tensor_parallel_size > 1 else "") + (
                f", {r.accelerator_type}" if r.accelerator_type else "")
            lines.append(f"  {name:<22}{spec.backend:<20}{', '.join(users) or 'no stage':<33}{reserves:<34}"
                         f"{r.replicas}, batches of up to {spec.batch_size}")
    return "\n".join(lines)


def calibration_config(config: RunConfig, samples: int) -> RunConfig:
    data = config.model_dump(mode="json")
    data["categories"] = {c: {s: min(n, samples) for s, n in v.items()} for c, v in data["categories"].items()}
    data["ray"]["progress"] = False
    return RunConfig.model_validate(data)


def project_costs(config: RunConfig, target: int | None = None, from_run: Path | None = None, samples: int = 8,
                  address: str | None = None, use_ray: bool = True) -> str:
    target = target or sum(c.train + c.test for c in config.categories.values())
    if from_run is not None:
        manifest = load_manifest(from_run)
        source = f"the run in {from_run}"
        cpu_slots = _cpu_slots(manifest, config)
    else:
        from pipeline.synthesis import synthesize

        work = Path(tempfile.mkdtemp(prefix="fusion-plan-"))
        try:
            result = synthesize(calibration_config(config, samples), work / "calibration", address=address,
                                use_ray=use_ray)
            manifest = result.manifest
        finally:
            shutil.rmtree(work, ignore_errors=True)
        source = f"a calibration run of {samples} samples per category and split"
        cpu_slots = config.ray.num_cpus or os.cpu_count() or 1
    return format_projection(projection(manifest, config, target, cpu_slots), target, source)


def _cpu_slots(manifest: dict[str, Any], config: RunConfig) -> int:
    return config.ray.num_cpus or manifest["config"]["ray"].get("num_cpus") or os.cpu_count() or 1


def projection(manifest: dict[str, Any], config: RunConfig, target: int, cpu_slots: int) -> dict[str, Any]:
    """Per stage: projected inputs, busy and GPU hours and parallel workers, and the totals."""
    counts = manifest["counts"]
    attempted = sum(s["attempted"] for c in counts["categories"].values() for s in c.values())
    accepted = counts["accepted"]
    if not accepted:
        raise RuntimeError("the measured run accepted no sample, so there is nothing to scale; loosen the filters "
                           "or calibrate with more samples")
    generated = target * attempted / accepted
    specs = {s.stage_id: s for s in config.stages}
    rows = []
    for stage in manifest["stages"]:
        spec = specs.get(stage["stage"])
        seconds_per_input = stage["busy_seconds"] / stage["input"] if stage["input"] else 0.0
        inputs = generated * stage["input"] / attempted if attempted else 0.0
        busy_hours = inputs * seconds_per_input / 3600
        model = bool(spec and spec.stage_class().uses_model)
        shared = spec.stage_class().models_used(spec.typed_params()) if spec else []
        per_input = (lambda key: stage.get(key, 0.0) / stage["input"] if stage["input"] else 0.0)  # noqa: E731
        rows.append({
            "stage": stage["stage"], "inputs": inputs, "seconds_per_input": seconds_per_input, "busy_hours": busy_hours,
            "gpu_hours": inputs * per_input("gpu_seconds") / 3600, "model": model, "shared_models": shared,
            "model_hours": inputs * per_input("model_seconds") / 3600,
            "workers": spec.resources.pool_bounds()[1] if model else cpu_slots,
            "measured_inputs": stage["input"],
        })
    # CPU stages and the writer share the CPU slots; a stage with its own model has its pool; a shared model's
    # replicas serve all the stages that call it (those stages' own time is mostly waiting on it).
    cpu_hours = sum(r["busy_hours"] for r in rows if not r["model"] and not r["shared_models"])
    limits = [cpu_hours / cpu_slots] + [r["busy_hours"] / r["workers"] for r in rows if r["model"]]
    for name, model_spec in config.models.items():
        hours = sum(r["model_hours"] for r in rows if name in r["shared_models"])
        limits.append(hours / model_spec.resources.replicas)
    return {"rows": rows, "generated": generated, "acceptance": accepted / attempted if attempted else 0.0,
            "measured_accepted": accepted, "busy_hours": sum(r["busy_hours"] for r in rows),
            "gpu_hours": sum(r["gpu_hours"] for r in rows), "wall_hours": max(limits), "cpu_slots": cpu_slots}


def format_projection(p: dict[str, Any], target: int, source: str) -> str:
    lines = [
        f"projection for {target:,} accepted samples, from {source} ({p['measured_accepted']:,} accepted, "
        f"{p['acceptance']:.1%} of those tried): about {math.ceil(p['generated']):,} samples to generate",
        f"  {'stage':<22}{'samples in':>14}{'s/sample':>11}{'busy hours':>12}{'GPU hours':>11}{'workers':>9}",
    ]
    for r in p["rows"]:
        lines.append(f"  {r['stage']:<22}{r['inputs']:>14,.0f}{r['seconds_per_input']:>11.4f}{r['busy_hours']:>12.3f}"
                     f"{r['gpu_hours']:>11.3f}{r['workers']:>9}")
    lines.append(f"  total: {p['busy_hours']:.3f} busy hours, {p['gpu_hours']:.3f} GPU-hours; wall clock about "
                 f"{p['wall_hours']:.3f} h with {p['cpu_slots']} CPU slots and the pools' maximum sizes "
                 "(the slowest pool sets the pace)")
    return "\n".join(lines)
