"""import: real conversion of music21 corpora, folders and archives into data/raw/<corpus>/."""

from __future__ import annotations

import csv
import json
import tarfile

import pytest
from symusic import Score

from cadenza.config import ImportSettings
from cadenza.data.corpus_import import IMPORT_ERRORS_NAME, METADATA_COLUMNS
from cadenza.data.sources import SourceError
from cadenza.paths import Paths
from cadenza.stages import import_corpus

from .conftest import NUM_CHORALES, make_midi


def _read_metadata(paths: Paths) -> list[dict[str, str]]:
    with paths.metadata_path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_bach_import_writes_midi_and_metadata(chorale_dir):
    files = sorted(p.name for p in chorale_dir.glob("*.mid"))
    assert files == ["bwv1.6.mid", "bwv10.7.mid", "bwv101.7.mid", "bwv102.7.mid"]
    for name in files:
        score = Score(str(chorale_dir / name))
        assert len(score.tracks) >= 4 and score.note_num() > 100  # four-part chorales
    rows = _read_metadata(Paths(root=chorale_dir.parents[2], corpus="bach"))
    assert list(rows[0]) == METADATA_COLUMNS
    assert rows[0]["source"] == "music21:bach/bwv1.6.mxl" and rows[0]["piece"] == "bwv1.6"
    metrics = json.loads((chorale_dir.parents[2] / "metrics" / "import.json").read_text())
    assert metrics["num_files"] == NUM_CHORALES and metrics["num_failed"] == 0


def test_parallel_import_matches_serial_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.setenv("CADENZA_CACHE_DIR", str(tmp_path / "cache"))
    digests = []
    for workers in (1, 2):
        paths = Paths(root=tmp_path / f"w{workers}", corpus="bach")
        settings = ImportSettings(limit=3, num_workers=workers)
        import_corpus.run(settings, paths, use_cache=False)
        digests.append({p.name: p.read_bytes() for p in sorted(paths.raw_dir.iterdir())})
    assert digests[0] == digests[1] and len(digests[0]) == 3 + 2  # MIDI + metadata + errors


def test_conversion_cache_gives_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("CADENZA_CACHE_DIR", str(tmp_path / "cache"))
    outputs = []
    for attempt in range(2):
        paths = Paths(root=tmp_path / f"run{attempt}", corpus="bach")
        import_corpus.run(ImportSettings(limit=2, num_workers=1), paths)
        outputs.append({p.name: p.read_bytes() for p in paths.raw_dir.glob("*.mid")})
    assert len(list((tmp_path / "cache").rglob("*.mid"))) == 2
    assert outputs[0] == outputs[1]


def test_abc_corpus_through_symusic(tmp_path):
    paths = Paths(root=tmp_path, corpus="ryans")
    settings = ImportSettings(corpus="ryans", music21_corpus="ryansMammoth", limit=5, num_workers=1)
    result = import_corpus.run(settings, paths)
    assert result.num_files == 5 and result.num_failed == 0
    rows = _read_metadata(paths)
    assert rows[0]["path"].endswith("-1.mid") and "#X:" in rows[0]["source"]
    assert all(Score(str(paths.raw_dir / row["path"])).note_num() > 20 for row in rows)


def test_folder_import_keeps_layout_and_replaces_old_corpus(tmp_path):
    source = tmp_path / "mine"
    make_midi(source / "suite" / "a.mid")
    make_midi(source / "b.midi", pitch=40)
    paths = Paths(root=tmp_path / "project", corpus="mine")
    (paths.raw_dir / "stale").mkdir(parents=True)
    settings = ImportSettings(corpus="mine", source="folder", path=str(source))
    import_corpus.run(settings, paths)
    assert sorted(
        p.relative_to(paths.raw_dir).as_posix() for p in paths.raw_dir.rglob("*.mid*")
    ) == ["b.midi", "suite/a.mid"]
    assert not (paths.raw_dir / "stale").exists()
    assert (paths.raw_dir / "b.midi").read_bytes() == (source / "b.midi").read_bytes()
    assert not list(paths.raw_dir.parent.glob(".*"))  # no staging leftovers


def test_archive_import(tmp_path):
    folder = tmp_path / "nesmdb_midi"
    make_midi(folder / "train" / "001_Game_00_01A.mid")
    make_midi(folder / "test" / "002_Game_00_01B.mid")
    archive = tmp_path / "nesmdb_midi.tar.gz"
    with tarfile.open(archive, "w:gz") as tarred:
        tarred.add(folder, arcname="nesmdb_midi")
    paths = Paths(root=tmp_path / "project", corpus="nes")
    settings = ImportSettings(corpus="nes", source="nesmdb", path=str(archive))
    result = import_corpus.run(settings, paths)
    assert result.num_files == 2
    assert [r["official_split"] for r in _read_metadata(paths)] == ["train", "test"]
    assert (paths.raw_dir / IMPORT_ERRORS_NAME).read_text().strip() == "path,source,error"


def test_missing_source_folder_is_a_clear_error(tmp_path):
    settings = ImportSettings(corpus="x", source="maestro", path=str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="MAESTRO folder not found"):
        import_corpus.run(settings, Paths(root=tmp_path, corpus="x"))


def test_interrupted_import_keeps_the_previous_corpus(tmp_path, monkeypatch):
    source = tmp_path / "mine"
    make_midi(source / "a.mid")
    paths = Paths(root=tmp_path / "project", corpus="mine")
    settings = ImportSettings(corpus="mine", source="folder", path=str(source), num_workers=1)
    import_corpus.run(settings, paths)
    before = {p.name: p.read_bytes() for p in paths.raw_dir.iterdir()}

    make_midi(source / "b.mid")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(import_corpus, "convert_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_corpus.run(settings, paths)
    assert {p.name: p.read_bytes() for p in paths.raw_dir.iterdir()} == before
    assert not list(paths.raw_dir.parent.glob(".*"))  # staging cleaned up
