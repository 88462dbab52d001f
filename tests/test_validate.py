"""validate: every kind of bad file gets quarantined with a precise reason, nothing is lost."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cadenza.config import ImportSettings, ValidateSettings
from cadenza.data.manifest import Limits, check_chunks, inspect_file
from cadenza.paths import Paths
from cadenza.stages import import_corpus, validate
from cadenza.stages.validate import ValidationFailed
from cadenza.validation.manifest import MANIFEST_COLUMNS

from .conftest import NUM_CHORALES, make_midi

# Test limits: 'huge.mid' (4000 notes, ~30 kB) is over the size limit, the chorales are not.
SETTINGS = ValidateSettings(max_file_bytes=25_000, max_bad_fraction=0.9)


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _import_folder(tmp_path: Path, folder: Path) -> Paths:
    paths = Paths(root=tmp_path / "project", corpus="mine")
    settings = ImportSettings(corpus="mine", source="folder", path=str(folder), num_workers=1)
    import_corpus.run(settings, paths)
    return paths


def test_each_bad_file_is_quarantined_with_its_reason(tmp_path, mixed_folder):
    folder, expected = mixed_folder
    paths = _import_folder(tmp_path, folder)
    raw_before = _tree_digest(paths.raw_dir)

    result = validate.run(SETTINGS, paths)

    manifest = pd.read_parquet(paths.manifest_path)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == NUM_CHORALES + len(expected)
    quarantine = pd.read_csv(paths.quarantine_path).set_index("path")
    assert quarantine["reason_code"].to_dict() == expected
    assert "declares" in quarantine.loc["bad/truncated.mid", "reason"]
    assert "ticks per quarter is 0" in quarantine.loc["bad/tpq_zero.mid", "reason"]
    assert "validate.max_file_bytes=25000" in quarantine.loc["bad/huge.mid", "reason"]
    assert "'.txt'" in quarantine.loc["bad/notes.txt", "reason"]

    ok = manifest[manifest["status"] == "ok"]
    assert sorted(ok["path"]) == sorted(
        f"chorales/{p.name}" for p in (folder / "chorales").glob("*.mid")
    )
    assert ok["parse_ok"].all() and (ok["notes"] > 100).all()
    assert ok["time_signature"].str.match(r"^\d+/\d+$").all()
    assert ((ok["min_pitch"] >= 0) & (ok["max_pitch"] <= 127)).all()

    metrics = json.loads(paths.metrics_path("validate").read_text())
    assert metrics["num_files"] == NUM_CHORALES + len(expected)
    assert metrics["num_ok"] == NUM_CHORALES
    assert metrics["num_quarantined"] == len(expected)
    assert metrics["quarantine_reasons"] == {code: 1 for code in expected.values()}
    assert metrics["suite_success"] is True and result.success
    assert (paths.validation_report_dir / "index.html").is_file()
    # Nothing under data/raw was modified or removed.
    assert _tree_digest(paths.raw_dir) == raw_before


def test_unreadable_files_are_quarantined(tmp_path, chorale_dir):
    paths = Paths(root=tmp_path, corpus="c")
    shutil.copytree(chorale_dir, paths.raw_dir)
    (paths.raw_dir / "folder.mid").mkdir()  # reading it fails: a directory
    (paths.raw_dir / "dangling.mid").symlink_to(tmp_path / "gone.mid")
    locked = make_midi(paths.raw_dir / "locked.mid")
    locked.chmod(0)
    try:
        validate.run(SETTINGS, paths)
    finally:
        locked.chmod(0o644)
    quarantine = pd.read_csv(paths.quarantine_path).set_index("path")
    assert quarantine.loc["folder.mid", "reason"] == "unreadable: Is a directory"
    assert quarantine.loc["dangling.mid", "reason"] == "unreadable: No such file or directory"
    if os.geteuid() != 0:  # root reads mode-000 files anyway
        assert quarantine.loc["locked.mid", "reason"] == "unreadable: Permission denied"


def test_exact_duplicates_are_kept_once_and_reported(tmp_path, chorale_dir):
    paths = Paths(root=tmp_path, corpus="c")
    shutil.copytree(chorale_dir, paths.raw_dir)
    first = sorted(paths.raw_dir.glob("*.mid"))[0]
    shutil.copy(first, paths.raw_dir / "zz_copy.mid")

    result = validate.run(SETTINGS, paths)

    manifest = pd.read_parquet(paths.manifest_path).set_index("path")
    assert manifest.loc["zz_copy.mid", "status"] == "duplicate"
    assert manifest.loc["zz_copy.mid", "duplicate_of"] == first.name
    assert result.num_duplicates == 1 and result.num_ok == NUM_CHORALES
    assert json.loads(paths.metrics_path("validate").read_text())["num_duplicates"] == 1


def test_suite_fails_when_too_many_files_are_bad(tmp_path, mixed_folder):
    folder, expected = mixed_folder
    paths = _import_folder(tmp_path, folder)
    strict = ValidateSettings(max_file_bytes=25_000, max_bad_fraction=0.2)

    with pytest.raises(ValidationFailed) as failure:
        validate.run(strict, paths)

    message = str(failure.value)
    assert "expect_column_values_to_be_in_set [status]" in message
    assert f"{len(expected)} quarantined" in message
    # The evidence is still written for the user to inspect.
    metrics = json.loads(paths.metrics_path("validate").read_text())
    assert metrics["suite_success"] is False
    assert metrics["failed_expectations"][0]["column"] == "status"
    assert len(pd.read_csv(paths.quarantine_path)) == len(expected)
    assert (paths.validation_report_dir / "index.html").is_file()


def test_import_failures_reach_the_quarantine(tmp_path, chorale_dir):
    folder = tmp_path / "src"
    shutil.copytree(chorale_dir, folder, ignore=shutil.ignore_patterns("*.csv"))
    (folder / "broken_link.mid").symlink_to(tmp_path / "nowhere.mid")
    paths = _import_folder(tmp_path, folder)
    assert not (paths.raw_dir / "broken_link.mid").exists()

    validate.run(SETTINGS, paths)

    quarantine = pd.read_csv(paths.quarantine_path).set_index("path")
    assert quarantine.loc["broken_link.mid", "reason_code"] == "import_failed"
    assert "No such file or directory" in quarantine.loc["broken_link.mid", "reason"]


def test_chunk_check_accepts_real_files_and_names_truncation(chorale_dir):
    data = sorted(chorale_dir.glob("*.mid"))[0].read_bytes()
    assert check_chunks(data) == ("", "")
    code, message = check_chunks(data[:-10])
    assert code == "truncated" and "only" in message
    limits = Limits(10**9, 1, 10**9, 0.0, 10**6)
    report = inspect_file(chorale_dir, sorted(p.name for p in chorale_dir.glob("*.mid"))[0], limits)
    assert report.error == "" and report.parse_ok and report.ticks_per_quarter > 0
