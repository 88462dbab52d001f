"""Where corpus files come from: music21's built-in corpora, a user's folder, and the layouts
of public data sets (MAESTRO v3, Lakh MIDI, NES-MDB, POP909).

Each lister returns SourceFile records in a deterministic (sorted) order. Nothing here reads
MIDI content or writes files; the `import` stage does the copying and converting.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, replace
from pathlib import Path

MIDI_SUFFIXES = (".mid", ".midi")
MUSIC21_SCORE_SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn", ".mid", ".midi")
BACH_LICENSE = (
    "public-domain composition; encoding distributed with the music21 corpus "
    "(see music21/corpus/license.txt)"
)
MUSIC21_LICENSE = "encoding distributed with the music21 corpus (see music21/corpus/license.txt)"
USER_LICENSE = "user-supplied; licence as given by its owner"


class SourceError(ValueError):
    """A corpus source is missing or not laid out as expected."""


@dataclass(frozen=True)
class SourceFile:
    """One file to bring into data/raw/<corpus>/."""

    rel_path: str
    """Destination, relative to data/raw/<corpus>/ (POSIX separators)."""
    source: str
    """Provenance: where the file came from, for metadata.csv."""
    piece: str
    """Group key: a piece and its variants share it, so they share a split."""
    convert: str = "copy"
    """copy | music21 (parse a score with music21, write MIDI) | abc (one ABC tune via symusic)."""
    source_path: str = ""
    abc_text: str = ""
    composer: str = ""
    title: str = ""
    license: str = ""
    official_split: str = ""


def music21_corpus_root() -> Path:
    import music21  # heavy: only when a music21 corpus is asked for

    return Path(music21.__file__).parent / "corpus"


def available_music21_corpora() -> list[str]:
    root = music21_corpus_root()
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))
    )


def _bach_piece(stem: str) -> str:
    """bwv248.23-2, bwv248.23-s -> bwv248.23: variants of one chorale share a piece."""
    return stem.split("-", 1)[0]


def list_bach_chorales() -> list[SourceFile]:
    """The chorales in music21/corpus/bach (scores only, not the choraleAnalyses folder)."""
    bach_dir = music21_corpus_root() / "bach"
    preference = (".mxl", ".xml", ".krn")  # bwv277 etc. exist as .krn and .mxl: keep one
    by_stem: dict[str, Path] = {}
    for path in sorted(
        bach_dir.iterdir(),
        key=lambda p: (p.stem, preference.index(p.suffix) if p.suffix in preference else 9),
    ):
        if path.is_file() and path.suffix in preference:
            by_stem.setdefault(path.stem, path)
    files = sorted(by_stem.values())
    return [
        SourceFile(
            rel_path=f"{p.stem}.mid",
            source=f"music21:bach/{p.name}",
            piece=_bach_piece(p.stem),
            convert="music21",
            source_path=str(p),
            composer="Johann Sebastian Bach",
            title=f"Chorale BWV {p.stem.removeprefix('bwv')}",
            license=BACH_LICENSE,
        )
        for p in files
    ]


_ABC_TUNE_START = re.compile(r"^X:\s*(\d+)", re.MULTILINE)


def split_abc_tunes(text: str) -> list[tuple[str, str]]:
    """Split an ABC file into (reference number, tune text); the file header goes to each."""
    starts = list(_ABC_TUNE_START.finditer(text))
    if not starts:
        return []
    header = text[: starts[0].start()]
    tunes = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        tunes.append((match.group(1), header + text[match.start() : end].strip() + "\n"))
    return tunes


def _abc_field(tune_text: str, field: str) -> str:
    match = re.search(rf"^{field}:\s*(.+)$", tune_text, re.MULTILINE)
    return match.group(1).strip() if match else ""


def _abc_title(tune_text: str, fallback: str) -> str:
    match = re.search(r"^T:\s*(.+)$", tune_text, re.MULTILINE)
    return match.group(1).strip() if match else fallback


def list_music21_corpus(name: str) -> list[SourceFile]:
    """Any corpus shipped with music21: scores through music21, ABC through symusic."""
    if name == "bach":
        return list_bach_chorales()
    root = music21_corpus_root()
    corpus_dir = root / name
    if not corpus_dir.is_dir():
        raise SourceError(
            f"import.music21_corpus = {name!r}: no such corpus in music21; "
            f"available: {', '.join(available_music21_corpora())}"
        )
    files: list[SourceFile] = []
    for path in sorted(corpus_dir.rglob("*")):
        rel = path.relative_to(corpus_dir)
        if not path.is_file() or any(part.startswith((".", "_")) for part in rel.parts):
            continue
        stem_rel = rel.with_suffix("").as_posix()
        if path.suffix == ".abc":
            text = path.read_text(encoding="utf-8", errors="replace")
            for number, tune in split_abc_tunes(text):
                files.append(
                    SourceFile(
                        rel_path=f"{stem_rel}-{number}.mid",
                        source=f"music21:{name}/{rel.as_posix()}#X:{number}",
                        piece=f"{stem_rel}-{number}",
                        convert="abc",
                        abc_text=tune,
                        composer=_abc_field(tune, "C") or "traditional",
                        title=_abc_title(tune, f"{stem_rel} {number}"),
                        license=MUSIC21_LICENSE,
                    )
                )
        elif path.suffix in MUSIC21_SCORE_SUFFIXES:
            files.append(
                SourceFile(
                    rel_path=f"{stem_rel}.mid",
                    source=f"music21:{name}/{rel.as_posix()}",
                    piece=stem_rel,
                    convert="music21",
                    source_path=str(path),
                    composer=name,
                    title=path.stem,
                    license=MUSIC21_LICENSE,
                )
            )
    return files


# Explicit variant markers only: 'Prelude_2' is another prelude, 'Prelude_v2' a variant.
_VARIANT_SUFFIX = re.compile(
    r"([ _-]*(\(\d+\)|copy|v\d+|version\s*\d+|var\w*\s*\d*|alt\w*\s*\d*|take\s*\d+))+$",
    re.IGNORECASE,
)


def piece_from_path(rel: Path) -> str:
    """Group key for a user file: its folder plus its name without variant suffixes.

    'set/Minuet_v2.mid' and 'set/Minuet (1).mid' both give 'set/minuet'.
    """
    stem = _VARIANT_SUFFIX.sub("", rel.stem).strip().lower() or rel.stem.lower()
    parent = rel.parent.as_posix()
    return stem if parent == "." else f"{parent}/{stem}"


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise SourceError(f"import.path = {str(path)!r}: {what} folder not found")


def _user_metadata(folder: Path) -> dict[str, dict[str, str]]:
    """Optional metadata.csv in a user folder: path plus any of piece, composer, title, license."""
    meta_path = folder / "metadata.csv"
    if not meta_path.is_file():
        return {}
    with meta_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if rows and "path" not in rows[0]:
        raise SourceError(f"{meta_path}: needs a 'path' column naming each file")
    return {row["path"]: row for row in rows}


def list_folder(folder: Path) -> list[SourceFile]:
    """Every file under a user's folder (recursive, relative paths kept, hidden files skipped).

    Non-MIDI files are brought along on purpose: `validate` quarantines them with a reason
    instead of them vanishing unseen.
    """
    _require_dir(folder, "user MIDI")
    metadata = _user_metadata(folder)
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or rel.as_posix() == "metadata.csv":
            continue
        if path.is_dir() and not path.is_symlink():
            continue
        meta = metadata.get(rel.as_posix(), {})
        files.append(
            SourceFile(
                rel_path=rel.as_posix(),
                source=f"folder:{rel.as_posix()}",
                piece=meta.get("piece") or piece_from_path(rel),
                source_path=str(path),
                composer=meta.get("composer", ""),
                title=meta.get("title") or rel.stem,
                license=meta.get("license") or USER_LICENSE,
            )
        )
    return files


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def list_maestro(folder: Path) -> list[SourceFile]:
    """MAESTRO v3: maestro-v3.0.0.csv names every MIDI file and gives the official split."""
    _require_dir(folder, "MAESTRO")
    csvs = sorted(folder.glob("maestro-v*.csv"))
    if not csvs:
        raise SourceError(
            f"{folder}: no maestro-v*.csv found; point import.path at the unpacked MAESTRO folder"
        )
    split_names = {"train": "train", "validation": "valid", "test": "test"}
    files = []
    with csvs[-1].open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            rel = row["midi_filename"]
            composer, title = row["canonical_composer"], row["canonical_title"]
            files.append(
                SourceFile(
                    rel_path=rel,
                    source=f"maestro:{rel}",
                    piece=_slug(f"{composer} {title}"),
                    source_path=str(folder / rel),
                    composer=composer,
                    title=title,
                    license="CC BY-NC-SA 4.0 (MAESTRO)",
                    official_split=split_names.get(row["split"], ""),
                )
            )
    return sorted(files, key=lambda f: f.rel_path)


_MD5 = re.compile(r"^[0-9a-f]{32}$")
_MSD_TRACK = re.compile(r"^TR[A-Z0-9]{16}$")


def list_lakh(folder: Path) -> list[SourceFile]:
    """Lakh MIDI (lmd_full: <x>/<md5>.mid; lmd_matched: A/B/C/<MSD id>/<md5>.mid).

    Files matched to one Million Song Dataset track share a piece.
    """
    _require_dir(folder, "Lakh MIDI")
    files = []
    for path in sorted(folder.rglob("*.mid")):
        rel = path.relative_to(folder)
        if not _MD5.match(path.stem):
            continue  # not part of the LMD layout (e.g. a stray file); keep the listing strict
        track = path.parent.name
        files.append(
            SourceFile(
                rel_path=rel.as_posix(),
                source=f"lakh:{rel.as_posix()}",
                piece=track if _MSD_TRACK.match(track) else path.stem,
                source_path=str(path),
                title=path.stem,
                license="CC BY 4.0 (Lakh MIDI Dataset)",
            )
        )
    if not files:
        raise SourceError(
            f"{folder}: no <md5>.mid files found; is this an lmd_full or lmd_matched folder?"
        )
    return files


def list_nesmdb(folder: Path) -> list[SourceFile]:
    """NES-MDB MIDI: train/, valid/, test/ folders give the official split."""
    _require_dir(folder, "NES-MDB")
    files = []
    for split in ("train", "valid", "test"):
        for path in sorted((folder / split).glob("*.mid")):
            rel = path.relative_to(folder)
            game = path.stem.split("_")[1] if path.stem.count("_") >= 1 else ""
            files.append(
                SourceFile(
                    rel_path=rel.as_posix(),
                    source=f"nesmdb:{rel.as_posix()}",
                    piece=path.stem,
                    source_path=str(path),
                    composer=game,
                    title=path.stem,
                    license="NES-MDB (research use)",
                    official_split=split,
                )
            )
    if not files:
        raise SourceError(
            f"{folder}: expected train/, valid/ and test/ folders of .mid files (nesmdb_midi)"
        )
    return files


def list_pop909(folder: Path) -> list[SourceFile]:
    """POP909: NNN/NNN.mid plus NNN/versions/*.mid; all versions of a song share its piece.

    `folder` may also be the repository checkout/archive that holds a POP909/ subfolder.
    """
    _require_dir(folder, "POP909")
    if (folder / "POP909").is_dir():
        folder = folder / "POP909"
    files = []
    for song_dir in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
        for path in sorted(song_dir.rglob("*.mid")):
            rel = path.relative_to(folder)
            files.append(
                SourceFile(
                    rel_path=rel.as_posix(),
                    source=f"pop909:{rel.as_posix()}",
                    piece=song_dir.name,
                    source_path=str(path),
                    title=song_dir.name,
                    license="POP909 (research use)",
                )
            )
    if not files:
        raise SourceError(f"{folder}: expected numbered song folders (001/001.mid, ...) of POP909")
    return files


FOLDER_LISTERS = {
    "folder": list_folder,
    "maestro": list_maestro,
    "lakh": list_lakh,
    "nesmdb": list_nesmdb,
    "pop909": list_pop909,
}


MIX_KINDS = ("music21", *FOLDER_LISTERS)


def _mix_entry(entry: str) -> tuple[str, str]:
    kind, sep, arg = entry.partition(":")
    if not sep or kind not in MIX_KINDS or not arg:
        raise SourceError(
            f"import.mix entry {entry!r}: expected <kind>:<name or folder> with kind one of "
            f"{', '.join(MIX_KINDS)} (e.g. music21:palestrina, music21:*, folder:data/external)"
        )
    return kind, arg


def _mix_label(kind: str, arg: str) -> str:
    """The folder a source's files land in inside the mixed corpus."""
    return arg if kind == "music21" else f"{kind}-{_slug(Path(arg).name) or 'root'}"


def list_mix(entries: list[str], exclude: list[str], resolve=lambda p: Path(p)) -> list[SourceFile]:
    """Several sources as one corpus: each source's files under a folder of its own
    (music21 corpora by name, `music21:*` = every music21 corpus not in `exclude`; folders
    and data-set layouts as `folder:<path>`, `lakh:<path>`, ...).

    Paths and pieces are prefixed with that folder, so two sources never collide and a piece
    never spans two sources; the composer of an unattributed file is its source's name.
    """
    if not entries:
        raise SourceError("import.mix is empty: name at least one source (e.g. music21:*)")
    sources: list[tuple[str, str]] = []
    for entry in entries:
        kind, arg = _mix_entry(entry)
        if kind == "music21" and arg == "*":
            known = available_music21_corpora()
            unknown = sorted(set(exclude) - set(known))
            if unknown:
                raise SourceError(
                    f"import.mix_exclude names {unknown}: no such music21 corpus; "
                    f"available: {', '.join(known)}"
                )
            sources += [("music21", name) for name in known if name not in exclude]
        else:
            sources.append((kind, arg))
    files: list[SourceFile] = []
    seen: dict[str, str] = {}
    for kind, arg in sources:
        label = _mix_label(kind, arg)
        if label in seen:
            raise SourceError(
                f"import.mix: {kind}:{arg} and {seen[label]} would share the folder "
                f"{label!r}; list each source once (rename one folder if they differ)"
            )
        seen[label] = f"{kind}:{arg}"
        listed = (
            list_music21_corpus(arg) if kind == "music21" else FOLDER_LISTERS[kind](resolve(arg))
        )
        files += [
            replace(
                f,
                rel_path=f"{label}/{f.rel_path}",
                piece=f"{label}/{f.piece}",
                composer=f.composer or label,
            )
            for f in listed
        ]
    return files
