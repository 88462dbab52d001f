"""Writing outputs so that a crash or a full disk never leaves a half-written file behind, and
naming their contents: the one home of atomic file and folder swaps and of file digests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of path; it replaces path only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def replace_dir(staging: Path, final: Path) -> None:
    """Put the finished folder `staging` in the place of `final` as close to atomically as a
    folder allows: the old `final` is renamed aside, then removed, so `final` is never a mix of
    old and new files (a crash between the two renames leaves the old one as .<name>.old)."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(*parts: object, files: tuple[Path, ...] = ()) -> str:
    """Identity of a training run's settings and data, to decide whether to resume."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256((text + "".join(file_digest(f) for f in files)).encode()).hexdigest()
