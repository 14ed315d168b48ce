"""`fusion publish`: upload a finished dataset folder to the Hugging Face Hub as a dataset repo."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.card import validate_card
from pipeline.indexing import load_manifest
from pipeline.layout import OutputLayout

# Local bookkeeping that has no place on the Hub: the run's work units, model-call cache and lock.
IGNORE_PATTERNS = [".lock", "*.tmp-*", ".cache/*", "work/*", "cache/*"]


@dataclass(frozen=True)
class UploadPlan:
    root: Path
    repo_id: str
    private: bool
    files: list[tuple[Path, str, int]]  # local path, path in the repo, bytes

    @property
    def total_bytes(self) -> int:
        return sum(size for _, _, size in self.files)

    def describe(self) -> str:
        lines = [f"{size:>12,}  {local} -> {self.repo_id}:{remote}" for local, remote, size in self.files]
        visibility = "private" if self.private else "public"
        lines.append(f"{len(self.files)} files, {self.total_bytes:,} bytes, to {visibility} dataset repo {self.repo_id}")
        return "\n".join(lines)


class PublishError(RuntimeError):
    pass


def plan_upload(root: Path, repo_id: str, private: bool) -> UploadPlan:
    """Check the folder is a complete dataset with a sound card and list what would be uploaded."""
    layout = OutputLayout(Path(root))
    manifest = load_manifest(layout.root)
    if not manifest["complete"]:
        units = manifest["units"]
        raise PublishError(
            f"{layout.root} is incomplete ({units['complete']} of {units['planned']} shards); "
            "rerun `fusion synth` with the same config to finish it first"
        )
    problems = validate_card(layout.root)
    if problems:
        raise PublishError(f"dataset card {layout.card} is not valid:\n  " + "\n  ".join(problems))
    files = []
    for path in sorted(p for p in layout.root.rglob("*") if p.is_file()):
        remote = path.relative_to(layout.root).as_posix()
        if not any(fnmatch.fnmatch(remote, pattern) for pattern in IGNORE_PATTERNS):
            files.append((path, remote, path.stat().st_size))
    return UploadPlan(root=layout.root, repo_id=repo_id, private=private, files=files)


def publish(plan: UploadPlan, api: Any | None = None) -> str:
    """Create the repo if needed and upload; returns the repo URL. The token comes from the usual HF login."""
    from huggingface_hub import HfApi

    api = api or HfApi()
    try:
        url = api.create_repo(plan.repo_id, repo_type="dataset", private=plan.private, exist_ok=True)
        api.upload_folder(
            repo_id=plan.repo_id,
            folder_path=plan.root,
            repo_type="dataset",
            ignore_patterns=IGNORE_PATTERNS,
            commit_message=f"Upload dataset ({len(plan.files)} files)",
        )
    except Exception as error:
        raise PublishError(_hub_error_message(error, plan.repo_id)) from error
    return str(url)


def _hub_error_message(error: Exception, repo_id: str) -> str:
    """One line a user can act on, for the ways an upload fails (offline, unreachable, not logged in, ...)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    detail = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
    if isinstance(error, OfflineModeIsEnabled):
        return f"cannot publish {repo_id}: HF_HUB_OFFLINE is set; unset it to upload ({detail})"
    if isinstance(error, HfHubHTTPError):
        status = getattr(error.response, "status_code", None)
        hint = "log in with `hf auth login` or set HF_TOKEN" if status in (401, 403) else "see the Hub's answer"
        return f"the Hugging Face Hub refused the upload to {repo_id} (HTTP {status}): {hint} ({detail})"
    if isinstance(error, (OSError, ConnectionError)) or "Connect" in type(error).__name__ or "Timeout" in type(error).__name__:
        return f"could not reach the Hugging Face Hub to publish {repo_id}: check the network ({detail})"
    return f"publishing {repo_id} failed: {detail}"
