"""Corpus sources: music21 listings, user folders, data-set layouts, safe archive extraction."""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from cadenza.data.archive import UnsafeArchiveError, extract_archive
from cadenza.data.sources import (
    SourceError,
    list_bach_chorales,
    list_folder,
    list_lakh,
    list_maestro,
    list_music21_corpus,
    list_nesmdb,
    list_pop909,
    piece_from_path,
    split_abc_tunes,
)

from .conftest import make_midi


def test_bach_listing_is_the_chorales_with_variants_grouped():
    files = list_bach_chorales()
    names = [Path(f.source_path).name for f in files]
    # 408 .mxl + 2 .xml; the 3 .krn files duplicate .mxl chorales; choraleAnalyses excluded.
    assert len(files) == 410
    assert not any(name.endswith(".krn") for name in names)
    assert names == sorted(names) and "bwv1.6.mxl" in names
    assert not any("choraleAnalyses" in f.source_path for f in files)
    by_name = {Path(f.source_path).name: f for f in files}
    assert by_name["bwv248.23-2.mxl"].piece == by_name["bwv248.23-s.mxl"].piece == "bwv248.23"
    assert by_name["bwv69.6.xml"].piece == by_name["bwv69.6-a.mxl"].piece
    assert by_name["bwv1.6.mxl"].rel_path == "bwv1.6.mid"
    assert all(
        f.composer == "Johann Sebastian Bach" and "public-domain" in f.license for f in files
    )


def test_unknown_music21_corpus_lists_the_available_ones():
    with pytest.raises(SourceError, match="available: .*bach.*ryansMammoth"):
        list_music21_corpus("nosuchcorpus")


def test_abc_files_split_into_tunes_with_the_header():
    text = "%abc-2.1\nI:linebreak $\n\nX: 1\nT:One\nK:G\nGABc|\n\nX:2\nT:Two\nK:D\ndefg|\n"
    tunes = split_abc_tunes(text)
    assert [number for number, _ in tunes] == ["1", "2"]
    assert tunes[1][1].startswith("%abc-2.1\nI:linebreak $") and "T:Two" in tunes[1][1]
    assert "T:One" not in tunes[1][1]


def test_piece_from_path_strips_variant_suffixes():
    assert piece_from_path(Path("set/Minuet_v2.mid")) == "set/minuet"
    assert piece_from_path(Path("set/Minuet (1).mid")) == "set/minuet"
    assert piece_from_path(Path("Gigue-alt.midi")) == "gigue"
    assert piece_from_path(Path("42.mid")) == "42"
    assert piece_from_path(Path("Prelude_2.mid")) == "prelude_2"  # a number is not a variant
    assert piece_from_path(Path("bwv10.7.mid")) == "bwv10.7"


def test_folder_listing_keeps_relative_paths_and_user_metadata(tmp_path):
    make_midi(tmp_path / "a" / "b" / "song.mid")
    make_midi(tmp_path / "top.MIDI")
    (tmp_path / ".hidden.mid").write_bytes(b"x")
    (tmp_path / "readme.txt").write_text("hi")
    with (tmp_path / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["path", "composer", "piece"], ["top.MIDI", "Ann", "ann-1"]])
    files = {f.rel_path: f for f in list_folder(tmp_path)}
    assert sorted(files) == ["a/b/song.mid", "readme.txt", "top.MIDI"]
    assert files["top.MIDI"].composer == "Ann" and files["top.MIDI"].piece == "ann-1"
    assert files["a/b/song.mid"].piece == "a/b/song"
    with pytest.raises(SourceError, match="folder not found"):
        list_folder(tmp_path / "nope")


def test_maestro_layout_gives_official_split_and_pieces(tmp_path):
    root = tmp_path / "maestro-v3.0.0"
    rows = [
        ("Frédéric Chopin", "Ballade No. 1", "train", "2004/a.midi"),
        ("Frédéric Chopin", "Ballade No. 1", "train", "2006/b.midi"),
        ("Franz Liszt", "Sonata", "validation", "2008/c.midi"),
        ("J.S. Bach", "Prelude", "test", "2011/d.midi"),
    ]
    root.mkdir()
    with (root / "maestro-v3.0.0.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "canonical_composer",
                "canonical_title",
                "split",
                "year",
                "midi_filename",
                "audio_filename",
                "duration",
            ]
        )
        for composer, title, split, midi in rows:
            writer.writerow(
                [composer, title, split, midi[:4], midi, midi.replace("midi", "wav"), 1.0]
            )
            make_midi(root / midi)
    files = {f.rel_path: f for f in list_maestro(root)}
    assert [f.official_split for f in files.values()] == ["train", "train", "valid", "test"]
    assert (
        files["2004/a.midi"].piece == files["2006/b.midi"].piece == "fr-d-ric-chopin-ballade-no-1"
    )
    assert files["2008/c.midi"].composer == "Franz Liszt"
    with pytest.raises(SourceError, match="no maestro"):
        list_maestro(tmp_path)


def test_lakh_layouts(tmp_path):
    full = tmp_path / "lmd_full"
    md5a, md5b = "0" * 31 + "a", "1" * 31 + "b"
    make_midi(full / "0" / f"{md5a}.mid")
    make_midi(full / "1" / f"{md5b}.mid")
    make_midi(full / "stray.mid")
    assert [f.piece for f in list_lakh(full)] == [md5a, md5b]
    matched = tmp_path / "lmd_matched"
    make_midi(matched / "R" / "R" / "U" / "TRRRUJS128E0783F9C" / f"{md5a}.mid")
    make_midi(matched / "R" / "R" / "U" / "TRRRUJS128E0783F9C" / f"{md5b}.mid")
    assert {f.piece for f in list_lakh(matched)} == {"TRRRUJS128E0783F9C"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="md5"):
        list_lakh(tmp_path / "empty")


def test_nesmdb_split_folders(tmp_path):
    for split, name in [
        ("train", "297_SkyKid_00_01Start.mid"),
        ("valid", "001_Zelda_02_03Dungeon.mid"),
        ("test", "100_Mario_01_02Overworld.mid"),
    ]:
        make_midi(tmp_path / split / name)
    files = list_nesmdb(tmp_path)
    assert [(f.official_split, f.composer) for f in files] == [
        ("train", "SkyKid"),
        ("valid", "Zelda"),
        ("test", "Mario"),
    ]


def test_pop909_versions_share_the_song(tmp_path):
    make_midi(tmp_path / "001" / "001.mid")
    make_midi(tmp_path / "001" / "versions" / "001-v1.mid")
    make_midi(tmp_path / "002" / "002.mid")
    (tmp_path / "index.xlsx").write_bytes(b"not parsed")
    files = list_pop909(tmp_path)
    assert [(f.rel_path, f.piece) for f in files] == [
        ("001/001.mid", "001"),
        ("001/versions/001-v1.mid", "001"),
        ("002/002.mid", "002"),
    ]
    checkout = tmp_path / "POP909-Dataset-master"
    make_midi(checkout / "POP909" / "003" / "003.mid")
    assert [f.rel_path for f in list_pop909(checkout)] == ["003/003.mid"]


def test_archives_extract_to_their_single_folder(tmp_path):
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("maestro-v3.0.0/2004/a.midi", b"MThd")
    root = extract_archive(archive, tmp_path / "out")
    assert root.name == "maestro-v3.0.0" and (root / "2004" / "a.midi").read_bytes() == b"MThd"


def test_path_traversal_is_refused(tmp_path):
    evil_zip = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil_zip, "w") as zipped:
        zipped.writestr("../escape.mid", b"x")
    with pytest.raises(UnsafeArchiveError, match="outside"):
        extract_archive(evil_zip, tmp_path / "a")
    assert not (tmp_path / "escape.mid").exists()

    evil_tar = tmp_path / "evil.tar.gz"
    with tarfile.open(evil_tar, "w:gz") as tarred:
        link = tarfile.TarInfo("data/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tarred.addfile(link)
        info = tarfile.TarInfo("data/link/../../../escape2.mid")
        tarred.addfile(info, io.BytesIO(b""))
    with pytest.raises(UnsafeArchiveError):
        extract_archive(evil_tar, tmp_path / "b")
    assert not (tmp_path / "escape2.mid").exists()
