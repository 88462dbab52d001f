"""`validate` stage: inspect every imported file, quarantine the bad ones, gate on the suite.

Writes data/interim/manifest.parquet (one row per file), data/interim/quarantine.csv (each
bad file and why: files stay where they are, nothing is deleted), Data Docs HTML under
reports/validation/ and metrics/validate.json. Raises ValidationFailed, after writing all of
those, when the Great Expectations suite fails.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import pandas as pd

from cadenza.config import ValidateSettings
from cadenza.data.corpus_import import IMPORT_ERRORS_NAME
from cadenza.data.manifest import FileReport, Limits, inspect_file
from cadenza.data.sources import MIDI_SUFFIXES, piece_from_path
from cadenza.io import atomic_path, write_json
from cadenza.paths import Paths
from cadenza.progress import progress_bar
from cadenza.validation.suite import SuiteOutcome, run_suites

log = logging.getLogger(__name__)

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
QUARANTINE_COLUMNS = ["path", "reason_code", "reason", "sha256", "bytes"]
_BOOKKEEPING_FILES = {"metadata.csv", IMPORT_ERRORS_NAME}
_PARALLEL_THRESHOLD = 256  # below this, worker start-up costs more than it saves


class ValidationFailed(RuntimeError):
    """The corpus did not pass the validation suite; the message says which expectations."""


@dataclass
class ValidationResult:
    num_files: int
    num_ok: int
    num_quarantined: int
    num_duplicates: int
    bad_fraction: float
    quarantine_reasons: dict[str, int]
    suite: SuiteOutcome

    @property
    def success(self) -> bool:
        return self.suite.success


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


def _write_outputs(frame: pd.DataFrame, paths: Paths) -> None:
    with atomic_path(paths.manifest_path) as tmp:
        frame.to_parquet(tmp, index=False)
    quarantined = frame[frame["status"] == "quarantined"]
    quarantine = quarantined.rename(columns={"error": "reason"})[QUARANTINE_COLUMNS]
    with atomic_path(paths.quarantine_path) as tmp:
        quarantine.to_csv(tmp, index=False)


def summarize(result: ValidationResult) -> str:
    lines = [
        f"{result.num_files} files: {result.num_ok} usable, {result.num_quarantined} quarantined, "
        f"{result.num_duplicates} exact duplicates kept once"
    ]
    for code, count in sorted(result.quarantine_reasons.items()):
        lines.append(f"  quarantined {count:>5} x {code}")
    for failure in result.suite.failures:
        column = f" [{failure.column}]" if failure.column else ""
        lines.append(f"  FAILED {failure.suite}: {failure.expectation}{column}: {failure.observed}")
    return "\n".join(lines)


def run(settings: ValidateSettings, paths: Paths) -> ValidationResult:
    limits = Limits(
        max_file_bytes=settings.max_file_bytes,
        min_notes=settings.min_notes,
        max_notes=settings.max_notes,
        min_duration_seconds=settings.min_duration_seconds,
        max_duration_seconds=settings.max_duration_seconds,
    )
    files = list_corpus_files(paths.raw_dir)
    frame = build_manifest(paths.raw_dir, inspect_all(paths.raw_dir, files, limits))
    _write_outputs(frame, paths)

    suite = run_suites(frame, settings, paths.validation_report_dir)
    status_counts = Counter(frame["status"])
    quarantined = frame[frame["status"] == "quarantined"]
    result = ValidationResult(
        num_files=len(frame),
        num_ok=status_counts["ok"],
        num_quarantined=status_counts["quarantined"],
        num_duplicates=status_counts["duplicate"],
        bad_fraction=status_counts["quarantined"] / max(len(frame), 1),
        quarantine_reasons=dict(Counter(quarantined["reason_code"])),
        suite=suite,
    )
    metrics = {
        "num_files": result.num_files,
        "num_ok": result.num_ok,
        "num_quarantined": result.num_quarantined,
        "num_duplicates": result.num_duplicates,
        "bad_fraction": round(result.bad_fraction, 6),
        "quarantine_reasons": dict(sorted(result.quarantine_reasons.items())),
        "suite_success": suite.success,
        "num_expectations": len(suite.outcomes),
        "failed_expectations": [asdict(f) for f in suite.failures],
    }
    write_json(paths.metrics_path("validate"), metrics)
    log.info("validation: %s", summarize(result))
    if not suite.success:
        raise ValidationFailed(
            f"validation suite failed for {paths.raw_dir}:\n{summarize(result)}\n"
            f"See {paths.quarantine_path} and {suite.docs_index}."
        )
    return result
