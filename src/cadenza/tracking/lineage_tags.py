"""The facts every run is tagged with: git commit and the dvc.lock hashes of its inputs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml


def git_commit(root: Path) -> str:
    """HEAD commit, with '-dirty' when tracked files differ; 'unknown' outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def dvc_lock_hash(root: Path, stage: str, out_path: str, lock_path: Path | None = None) -> str:
    """md5 that dvc.lock (or lock_path) records for an output of a stage; 'unknown' when not
    recorded."""
    lock_path = lock_path or root / "dvc.lock"
    if not lock_path.is_file():
        return "unknown"
    lock = yaml.safe_load(lock_path.read_text()) or {}
    for out in lock.get("stages", {}).get(stage, {}).get("outs", []):
        if out.get("path") == out_path:
            return str(out.get("md5", "unknown"))
    return "unknown"
