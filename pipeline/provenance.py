"""Where a dataset came from: code version, package versions; never tokens or secrets."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata

from pipeline.config import REPO_ROOT

ENGINE_DISTRIBUTION = "fusion-engine"
# Packages whose versions can change what a run produces.
TRACKED_PACKAGES = (
    ENGINE_DISTRIBUTION, "numpy", "pillow", "pyarrow", "pydantic", "ray", "torch", "transformers",
    "diffusers", "open-clip-torch", "vllm", "webdataset", "huggingface-hub",
)


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str]:
    versions = {name: package_version(name) for name in TRACKED_PACKAGES}
    versions["python"] = platform.python_version()
    return {name: version for name, version in versions.items() if version}


@functools.cache
def git_sha() -> str:
    """Commit of the code that ran, with ``-dirty`` if it had uncommitted changes.

    ``FUSION_GIT_SHA`` wins: a Ray job's uploaded working dir has no ``.git``, so the submitter passes it.
    """
    if os.environ.get("FUSION_GIT_SHA"):
        return os.environ["FUSION_GIT_SHA"]
    try:
        sha = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def record_provenance() -> dict[str, object]:
    """The run-wide part of every record's provenance (stages add their models and settings)."""
    return {
        "engine": f"{ENGINE_DISTRIBUTION} {package_version(ENGINE_DISTRIBUTION) or 'unknown'}",
        "git_sha": git_sha(),
    }
