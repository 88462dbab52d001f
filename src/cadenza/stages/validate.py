"""`validate` stage: inspect every imported file, quarantine the bad ones, gate on the suite.

Writes data/interim/manifest.parquet (one row per file), data/interim/quarantine.csv (each
bad file and why: files stay where they are, nothing is deleted), Data Docs HTML under
reports/validation/ and metrics/validate.json. Raises ValidationFailed, after writing all of
those, when the Great Expectations suite fails.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass

import pandas as pd

from cadenza.config import ValidateSettings
from cadenza.data.manifest import Limits
from cadenza.io import atomic_path, write_json
from cadenza.paths import Paths
from cadenza.validation.manifest import build_manifest, inspect_all, list_corpus_files
from cadenza.validation.suite import SuiteOutcome, run_suites

log = logging.getLogger(__name__)

QUARANTINE_COLUMNS = ["path", "reason_code", "reason", "sha256", "bytes"]


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
