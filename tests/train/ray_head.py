"""A Ray head on 127.0.0.1 with every listener on its own free port, for `ray job submit` tests, cleaned up by its
session folder (never `ray stop`, which would stop every Ray on the machine)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_processes_using(folder: str) -> None:
    folder = str(Path(folder).resolve())
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            uses = folder in " ".join(process.info["cmdline"] or []) or any(
                f.path.startswith(folder) for f in process.open_files())
            if uses and process.pid != os.getpid():
                process.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue


@contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[tuple[str, dict[str, str]]]:
    """(dashboard address for `ray job submit`, environment for the CLI)."""
    temp_dir = tempfile.mkdtemp(prefix="rayt")  # short: Ray's socket paths must stay under 108 bytes
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    dashboard_port = free_port()
    ports = {flag: str(free_port()) for flag in (
        "--port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
        "--metrics-export-port", "--ray-client-server-port", "--node-manager-port", "--object-manager-port")}
    start = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
             "--include-dashboard=true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
             "--temp-dir", temp_dir, "--disable-usage-stats", *[a for flag, port in ports.items() for a in (flag, port)]]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dashboard_port}", env
    finally:
        kill_processes_using(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit_when_agent_is_up(command: list[str], env: dict[str, str], timeout: float = 400
                            ) -> subprocess.CompletedProcess:
    """`ray start` returns before the head's job agent listens; Ray then refuses submissions for a few seconds."""
    deadline = time.monotonic() + 90
    while True:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if "No available agent to submit job" not in result.stderr + result.stdout or time.monotonic() > deadline:
            return result
        time.sleep(2)
