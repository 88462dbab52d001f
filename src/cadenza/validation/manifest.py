"""The manifest of an imported corpus: one row per file, with its status and duplicates.

Every file under data/raw/<corpus>/ is inspected (data/manifest.py, in parallel for large
corpora); files that failed to import are added with that reason; exact duplicates (same
sha256) are kept once. The `validate` stage writes the manifest and runs the suite on it.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path

import pandas as pd

from cadenza.data.corpus_import import IMPORT_ERRORS_NAME
from cadenza.data.manifest import FileReport, Limits, inspect_file
from cadenza.data.sources import MIDI_SUFFIXES, piece_from_path
from cadenza.progress import progress_bar

METADATA_FIELDS = ["piece", "composer", "title", "source", "official_split"]
MANIFEST_COLUMNS = [
    "path",
    "sha256",
    "bytes",
    "parse_ok",
    "error",
    "reason_code",
    "tracks",
    "notes",
    "duration_seconds",
    "min_pitch",
    "max_pitch",
    "tempo_qpm",
    "time_signature",
    "ticks_per_quarter",
    "status",
    "duplicate_of",
    *METADATA_FIELDS,
]
_BOOKKEEPING_FILES = {"metadata.csv", IMPORT_ERRORS_NAME}
_PARALLEL_THRESHOLD = 256  # below this, worker start-up costs more than it saves


def list_corpus_files(raw_dir: Path) -> list[str]:
    """Every file of the imported corpus (relative POSIX paths), bookkeeping files excluded."""
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{raw_dir}: no imported corpus here; run `cadenza import` first")
    files = []
    for path in sorted(raw_dir.rglob("*")):
        rel = path.relative_to(raw_dir).as_posix()
        if rel in _BOOKKEEPING_FILES:
            continue
        # A folder named like a MIDI file is listed so it gets quarantined as unreadable.
        if path.is_file() or path.is_symlink() or path.suffix.lower() in MIDI_SUFFIXES:
            files.append(rel)
    return files


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def inspect_all(raw_dir: Path, files: list[str], limits: Limits) -> list[FileReport]:
    inspect = partial(inspect_file, raw_dir, limits=limits)
    workers = min(os.cpu_count() or 1, 8)
    with progress_bar("validate", total=len(files)) as advance:
        if len(files) < _PARALLEL_THRESHOLD or workers == 1:
            reports = []
            for rel in files:
                reports.append(inspect(rel))
                advance()
            return reports
        with ProcessPoolExecutor(max_workers=workers) as pool:
            reports = []
            for report in pool.map(inspect, files, chunksize=32):
                reports.append(report)
                advance()
            return reports


def build_manifest(raw_dir: Path, reports: list[FileReport]) -> pd.DataFrame:
    """Manifest rows from reports plus import failures, with status and duplicates resolved."""
    metadata = {row["path"]: row for row in _read_csv(raw_dir / "metadata.csv")}
    rows = []
    for report in reports:
        row = asdict(report)
        row["status"] = "quarantined" if report.error else "ok"
        rows.append(row)
    for failure in _read_csv(raw_dir / IMPORT_ERRORS_NAME):
        rows.append(
            {
                **asdict(FileReport(path=failure["path"])),
                "reason_code": "import_failed",
                "error": f"import failed: {failure['error']}",
                "status": "quarantined",
            }
        )
    rows.sort(key=lambda r: r["path"])
    first_by_hash: dict[str, str] = {}
    for row in rows:
        row["duplicate_of"] = ""
        if row["status"] == "ok":
            first = first_by_hash.setdefault(row["sha256"], row["path"])
            if first != row["path"]:
                row["status"], row["duplicate_of"] = "duplicate", first
        meta = metadata.get(row["path"], {})
        for name in METADATA_FIELDS:
            row[name] = meta.get(name, "")
        row["piece"] = row["piece"] or piece_from_path(Path(row["path"]))
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for column in ["tracks", "notes", "min_pitch", "max_pitch", "ticks_per_quarter"]:
        frame[column] = frame[column].astype("Int64")
    for column in ["duration_seconds", "tempo_qpm"]:
        frame[column] = frame[column].astype("Float64")
    frame["bytes"] = frame["bytes"].astype("int64")
    return frame
