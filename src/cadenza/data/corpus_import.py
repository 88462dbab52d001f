"""Importing a corpus: list its source files, convert them (in parallel), reuse unchanged ones.

The `import` stage (stages/import_corpus.py) writes the result into a staging folder and swaps
it into place only when complete. Files that fail to convert are listed in import_errors.csv
beside metadata.csv; `validate` quarantines them with that reason.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cadenza.config import ImportSettings
from cadenza.data.convert import convert_one
from cadenza.data.sources import FOLDER_LISTERS, SourceFile, list_mix, list_music21_corpus
from cadenza.progress import progress_bar

METADATA_COLUMNS = [
    "path",
    "source",
    "piece",
    "composer",
    "title",
    "license",
    "official_split",
    "source_sha256",
]
IMPORT_ERRORS_NAME = "import_errors.csv"


def list_sources(
    settings: ImportSettings, source_dir: Path, resolve=lambda p: Path(p)
) -> list[SourceFile]:
    """The files to import; `limit` keeps the first files, or for a mix an evenly spaced
    sample of the whole list, so every source keeps its share."""
    if settings.source == "music21":
        files = list_music21_corpus(settings.music21_corpus)
    elif settings.source == "mix":
        files = list_mix(settings.mix, settings.mix_exclude, resolve)
        if settings.limit and settings.limit < len(files):
            step = len(files) / settings.limit
            return [files[int(i * step)] for i in range(settings.limit)]
        return files
    else:
        files = FOLDER_LISTERS[settings.source](source_dir)
    return files[: settings.limit] if settings.limit else files


def source_digest(item: SourceFile) -> str:
    """sha256 of what a file is made from (the source file's bytes, or the ABC tune text)."""

    digest = hashlib.sha256(item.convert.encode())
    if item.convert == "abc":
        digest.update(item.abc_text.encode())
    else:
        try:
            with open(item.source_path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError:
            return ""  # unreadable: never reused; the conversion reports why
    return digest.hexdigest()


def _previous_import(raw_dir: Path) -> dict[str, str]:
    """{path: source_sha256} of the corpus imported last time (empty when none)."""
    meta = raw_dir / "metadata.csv"
    if not meta.is_file():
        return {}
    with meta.open(newline="", encoding="utf-8") as handle:
        return {
            row["path"]: row.get("source_sha256") or ""
            for row in csv.DictReader(handle)
            if row.get("source_sha256")
        }


def reuse_unchanged(
    files: list[SourceFile], digests: dict[str, str], old_root: Path, staging: Path
) -> set[str]:
    """Link (or copy) the files whose source is unchanged since the last import into the
    staging folder; return their paths. Only new or changed files are converted."""
    previous = _previous_import(old_root)
    reused = set()
    for item in files:
        digest = digests[item.rel_path]
        old = old_root / item.rel_path
        if not digest or previous.get(item.rel_path) != digest or not old.is_file():
            continue
        dest = staging / item.rel_path
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(old, dest)
        except OSError:
            shutil.copyfile(old, dest)
        reused.add(item.rel_path)
    return reused


def resolve_workers(num_workers: int) -> int:
    return num_workers or os.cpu_count() or 1


def convert_all(
    files: list[SourceFile], dest_root: Path, num_workers: int, cache_dir: Path | None
) -> dict[str, str]:
    """Convert every file (in parallel when num_workers > 1); return {rel_path: error}."""
    errors: dict[str, str] = {}
    with progress_bar("import", total=len(files)) as advance:
        if num_workers <= 1:
            for item in files:
                if (error := convert_one(item, dest_root, cache_dir)) is not None:
                    errors[item.rel_path] = error
                advance()
        else:
            with ProcessPoolExecutor(max_workers=num_workers) as pool:
                results = pool.map(
                    convert_one,
                    files,
                    [dest_root] * len(files),
                    [cache_dir] * len(files),
                    chunksize=max(1, len(files) // (num_workers * 8)),
                )
                for item, error in zip(files, results, strict=True):
                    if error is not None:
                        errors[item.rel_path] = error
                    advance()
    return errors


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
