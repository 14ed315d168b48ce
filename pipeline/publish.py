"""`fusion publish`: upload a finished dataset folder to the Hugging Face Hub as a dataset repo."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.card import validate_card
from pipeline.manifest import load_manifest
from pipeline.shards import OutputLayout

# Local bookkeeping that has no place on the Hub.
IGNORE_PATTERNS = [".lock", "*.tmp-*", ".cache/*"]


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
    url = api.create_repo(plan.repo_id, repo_type="dataset", private=plan.private, exist_ok=True)
    api.upload_folder(
        repo_id=plan.repo_id,
        folder_path=plan.root,
        repo_type="dataset",
        ignore_patterns=IGNORE_PATTERNS,
        commit_message=f"Upload dataset ({len(plan.files)} files)",
    )
    return str(url)
