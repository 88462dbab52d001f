"""Unpacking downloaded data-set archives (zip, tar.*) safely.

Archives are data, not code: a member that would land outside the destination (absolute
path, '..', a link pointing out), or that is a device or FIFO, stops the extraction with an
error naming it.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class UnsafeArchiveError(ValueError):
    """An archive member would escape the destination folder."""


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _check_member_name(archive: Path, name: str) -> None:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and ":" in posix.parts[0]):
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside the target")


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract archive into dest; return the data root (a single top-level folder, if that is
    all the archive holds, as with maestro-v3.0.0.zip)."""
    dest.mkdir(parents=True, exist_ok=True)
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                _check_member_name(archive, info.filename)
            zipped.extractall(dest)
    else:
        with tarfile.open(archive) as tarred:
            for member in tarred.getmembers():
                _check_member_name(archive, member.name)
                if member.isdev() or member.isfifo():
                    raise UnsafeArchiveError(
                        f"{archive}: member {member.name!r} is a device or FIFO"
                    )
            try:
                tarred.extractall(dest, filter="data")  # also refuses links that point outside
            except tarfile.FilterError as exc:
                raise UnsafeArchiveError(f"{archive}: {exc}") from None
    entries = [p for p in dest.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest
