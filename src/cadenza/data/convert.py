"""Turning one SourceFile into one MIDI file. Runs inside worker processes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path

from cadenza.data.sources import SourceFile


def default_cache_dir() -> Path:
    """Conversion cache (music21 score -> MIDI), keyed by source hash and music21 version."""
    return Path(os.environ.get("CADENZA_CACHE_DIR", Path.home() / ".cache" / "cadenza"))


@contextlib.contextmanager
def _quiet_stderr():
    """symusic's ABC parser (abc2midi) writes warnings straight to fd 2; keep logs readable."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _music21_to_midi(source: Path, dest: Path, cache_dir: Path | None) -> None:
    import music21

    cached = None
    if cache_dir is not None:
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        cached = cache_dir / f"music21-{music21.__version__}" / f"{digest}.mid"
        if cached.is_file():
            shutil.copyfile(cached, dest)
            return
    score = music21.converter.parse(source)
    tmp = dest.with_name(f".{dest.name}.tmp.mid")
    score.write("midi", fp=tmp)
    os.replace(tmp, dest)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(cached, dest.read_bytes())


def _abc_to_midi(tune_text: str, dest: Path) -> None:
    from symusic import Score

    with _quiet_stderr():
        score = Score.from_abc(tune_text)
    if score.note_num() == 0:
        raise ValueError("ABC tune produced no notes")
    score.dump_midi(str(dest))


def convert_one(item: SourceFile, dest_root: Path, cache_dir: Path | None) -> str | None:
    """Write item into dest_root/<rel_path>; return None on success, else the error text."""
    dest = dest_root / item.rel_path
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if item.convert == "copy":
            shutil.copyfile(item.source_path, dest)
        elif item.convert == "music21":
            _music21_to_midi(Path(item.source_path), dest, cache_dir)
        elif item.convert == "abc":
            _abc_to_midi(item.abc_text, dest)
        else:
            raise AssertionError(f"unknown conversion {item.convert!r}")
    except OSError as exc:
        dest.unlink(missing_ok=True)
        return f"unreadable: {exc.strerror or exc} ({item.source_path or item.source})"
    except Exception as exc:  # a bad score must not stop the corpus; it is reported instead
        dest.unlink(missing_ok=True)
        return f"conversion failed: {type(exc).__name__}: {exc}"
    return None
