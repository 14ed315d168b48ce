"""A real Ray head on 127.0.0.1 receives the synthesis job through the `ray job submit` CLI."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.synthesis.processes import kill_processes_using

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def submit_when_agent_is_up(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`ray start` returns before the head's job agent listens; Ray then refuses submissions for a few seconds."""
    deadline = time.monotonic() + 90
    while True:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        if "No available agent to submit job" not in result.stderr + result.stdout or time.monotonic() > deadline:
            return result
        time.sleep(2)


@pytest.fixture(scope="module")
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="rayh")
    # The job's `python` must be this environment's, as it is for a user with the venv activated.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    dashboard_port = free_port()
    # Every listener on its own free port, so this head never collides with another Ray on the machine
    # (the tests' embedded one holds the default agent ports).
    ports = {flag: str(free_port()) for flag in (
        "--port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
        "--metrics-export-port", "--ray-client-server-port", "--node-manager-port", "--object-manager-port")}
    start = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
             "--include-dashboard=true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
             "--temp-dir", temp_dir, "--disable-usage-stats", *[a for flag, port in ports.items() for a in (flag, port)]]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dashboard_port}", f"127.0.0.1:{ports['--port']}", env
    finally:
        kill_processes_using(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_the_synthesis_job(ray_head, tmp_path):
    address, _, env = ray_head
    out = tmp_path / "job-output"
    submit = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO),
              "--runtime-env", str(REPO / "jobs/runtime_env.yaml"), "--",
              "python", "-m", "jobs.synthesize", "--config", "demo", "--out", str(out),
              "--set", "dataset.unit_size=10", "--set", "ray.progress=false",
              "--set", "categories={SynthCount: {train: 20, test: 10}, SynthConvShort: {train: 10}}"]
    result = submit_when_agent_is_up(submit, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["accepted"] == 40
    assert (out / "README.md").is_file()
    # The job's driver used the cluster it was submitted to, not an embedded Ray of its own.
    assert "connecting to Ray cluster" in result.stdout
    assert "starting an embedded local Ray" not in result.stdout


def test_synth_connects_to_the_cluster_named_by_address(ray_head, tmp_path):
    _, cluster_address, env = ray_head
    out = tmp_path / "direct"
    command = [sys.executable, "-m", "jobs.cli", "synth", "--config", "demo", "--out", str(out),
               "--address", cluster_address, "--set", "ray.progress=false",
               "--set", "categories={SynthSpatial: {train: 6}}", "--set", "dataset.unit_size=3"]
    env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"connecting to Ray cluster at {cluster_address}" in result.stderr
    assert json.loads((out / "manifest.json").read_text())["counts"]["accepted"] == 6
