"""Cleanup of Ray daemons a test started, found by their session folder rather than by `ray stop`,
which would stop every Ray on the machine (the test session's embedded one included)."""

from pathlib import Path

import psutil


def kill_processes_using(folder: str) -> int:
    """SIGKILL every process whose command line or open files mention ``folder``; returns how many."""
    folder = str(Path(folder).resolve())
    killed = 0
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            uses_folder = folder in " ".join(process.info["cmdline"] or []) or any(
                f.path.startswith(folder) for f in process.open_files()
            )
            if uses_folder and process.pid != psutil.Process().pid:
                process.kill()
                killed += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return killed
