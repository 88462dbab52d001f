"""`import` stage: bring a corpus into data/raw/<corpus>/ as MIDI files plus metadata.csv.

The corpus is written to a staging folder and swapped into place only when complete, so an
interrupted import never leaves a half-written corpus behind. Files that fail to convert are
listed in import_errors.csv beside metadata.csv; `validate` quarantines them with that reason.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from cadenza.config import ImportSettings
from cadenza.data.archive import extract_archive, is_archive
from cadenza.data.convert import convert_one, default_cache_dir
from cadenza.data.sources import FOLDER_LISTERS, SourceFile, list_mix, list_music21_corpus
from cadenza.io import replace_dir, write_json
from cadenza.paths import Paths
from cadenza.progress import progress_bar

log = logging.getLogger(__name__)

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


@dataclass
class ImportResult:
    corpus: str
    num_files: int
    num_failed: int
    seconds: float
    num_workers: int
    num_converted: int = 0
    """Files converted or copied in this run; the others were unchanged since the last import
    (same source content hash) and were taken over from it."""
    num_reused: int = 0

    @property
    def files_per_second(self) -> float:
        return self.num_files / self.seconds if self.seconds > 0 else 0.0


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
    import hashlib

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


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def run(settings: ImportSettings, paths: Paths, use_cache: bool = True) -> ImportResult:
    """Import the corpus; a downloaded archive (zip, tar.gz) at import.path is unpacked first."""
    source_path = paths.resolve(settings.path)
    if settings.source != "music21" and is_archive(source_path):
        paths.raw_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=paths.raw_dir.parent, prefix=".unpack-") as tmp:
            log.info("unpacking %s", source_path)
            return _import(settings, paths, extract_archive(source_path, Path(tmp)), use_cache)
    return _import(settings, paths, source_path, use_cache)


def _import(
    settings: ImportSettings, paths: Paths, source_dir: Path, use_cache: bool
) -> ImportResult:
    started = time.perf_counter()
    files = list_sources(settings, source_dir, paths.resolve)
    if not files:
        raise ValueError(f"import: the source {settings.source!r} has no files to import")
    duplicates = [path for path, n in Counter(f.rel_path for f in files).items() if n > 1]
    if duplicates:
        raise AssertionError(f"two sources map to one destination: {sorted(duplicates)[:5]}")

    num_workers = resolve_workers(settings.num_workers)
    paths.raw_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = paths.raw_dir.with_name(f".{paths.raw_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    log.info("importing %d files from %s with %d workers", len(files), settings.source, num_workers)
    try:
        cache_dir = default_cache_dir() if use_cache else None
        digests = {f.rel_path: source_digest(f) for f in files}
        reused = reuse_unchanged(files, digests, paths.raw_dir, staging) if use_cache else set()
        todo = [f for f in files if f.rel_path not in reused]
        log.info("%d files unchanged since the last import, %d to convert", len(reused), len(todo))
        errors = convert_all(todo, staging, num_workers, cache_dir)
        rows = [
            {"path": f.rel_path, **asdict(f), "source_sha256": digests[f.rel_path]}
            for f in files
            if f.rel_path not in errors
        ]
        _write_csv(staging / "metadata.csv", METADATA_COLUMNS, rows)
        failures = [
            {"path": f.rel_path, "source": f.source, "error": errors[f.rel_path]}
            for f in files
            if f.rel_path in errors
        ]
        _write_csv(staging / IMPORT_ERRORS_NAME, ["path", "source", "error"], failures)
    except BaseException:  # interrupted or disk full: the previous corpus stays as it was
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, paths.raw_dir)

    result = ImportResult(
        corpus=settings.corpus,
        num_files=len(rows),
        num_failed=len(errors),
        seconds=time.perf_counter() - started,
        num_workers=num_workers,
        num_converted=len(todo),
        num_reused=len(reused),
    )
    write_json(
        paths.metrics_path("import"),
        {**asdict(result), "files_per_second": result.files_per_second},
    )
    return result
