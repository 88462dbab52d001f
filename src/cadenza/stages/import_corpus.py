"""`import` stage: bring a corpus into data/raw/<corpus>/ as MIDI files plus metadata.csv.

The corpus is written to a staging folder and swapped into place only when complete, so an
interrupted import never leaves a half-written corpus behind; metrics/import.json says how
many files came in, how many failed and how fast. The listing and conversion live in
data/corpus_import.py.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from cadenza.config import ImportSettings
from cadenza.data.archive import extract_archive, is_archive
from cadenza.data.convert import default_cache_dir
from cadenza.data.corpus_import import (
    IMPORT_ERRORS_NAME,
    METADATA_COLUMNS,
    convert_all,
    list_sources,
    resolve_workers,
    reuse_unchanged,
    source_digest,
    write_csv,
)
from cadenza.io import replace_dir, write_json
from cadenza.paths import Paths

log = logging.getLogger(__name__)


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
        write_csv(staging / "metadata.csv", METADATA_COLUMNS, rows)
        failures = [
            {"path": f.rel_path, "source": f.source, "error": errors[f.rel_path]}
            for f in files
            if f.rel_path in errors
        ]
        write_csv(staging / IMPORT_ERRORS_NAME, ["path", "source", "error"], failures)
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
