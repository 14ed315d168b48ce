"""`ray job submit -- python -m jobs.train --ray` on a local Ray head: Ray Train's TorchTrainer runs the training loop
on two workers (a gloo process group) and writes the same checkpoints as torchrun."""

from __future__ import annotations

import json
from pathlib import Path

from tests.train.ray_head import RAY, ray_head, submit_when_agent_is_up

REPO = Path(__file__).resolve().parents[2]


def test_ray_job_submit_trains_on_two_ray_train_workers(small_dataset, tmp_path):
    out = tmp_path / "ray-run"
    with ray_head(num_cpus=2) as (address, env):
        submit = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO),
                  "--runtime-env", str(REPO / "jobs/runtime_env.yaml"), "--",
                  "python", "-m", "jobs.train", "--ray", "--num-workers", "2", "--config", "tiny",
                  "--data", str(small_dataset), "--out", str(out), "--set", "max_steps=2",
                  "--set", "log.tensorboard=false"]
        result = submit_when_agent_is_up(submit, env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    assert "trained 2/2 steps on 2 Ray Train workers" in result.stdout
    state = json.loads((out / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["strategy"] == "ddp" and len(state["loader"]) == 2
    from model.fusion import FusionModel

    assert FusionModel.from_pretrained(out / "checkpoints" / "step-00000002").config.name == "fusion-cpu-small"
