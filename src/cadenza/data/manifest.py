"""Inspect one MIDI file: integrity, header and content statistics for the manifest.

The checks run cheapest first and stop at the first failure, so every bad file gets one
precise reason: wrong extension, unreadable, empty, too large, structurally broken (checked
from the chunk headers, before any parser sees the file), unparsable, then content bounds.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from cadenza.data.sources import MIDI_SUFFIXES


@dataclass
class FileReport:
    """One manifest row. `error` is the quarantine reason ('' for a good file), `reason_code`
    its short category (for counting in metrics)."""

    path: str
    reason_code: str = ""
    sha256: str = ""
    bytes: int = 0
    parse_ok: bool = False
    error: str = ""
    tracks: int | None = None
    notes: int | None = None
    duration_seconds: float | None = None
    min_pitch: int | None = None
    max_pitch: int | None = None
    tempo_qpm: float | None = None
    time_signature: str = ""
    ticks_per_quarter: int | None = None

    def fail(self, reason_code: str, error: str) -> FileReport:
        self.reason_code, self.error = reason_code, error
        return self


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int
    min_notes: int
    max_notes: int
    min_duration_seconds: float
    max_duration_seconds: float


def check_chunks(data: bytes) -> tuple[str, str]:
    """Structural check of a Standard MIDI File from its chunk headers.

    Returns (reason_code, message), both '' when the file is sound.
    """
    if len(data) < 14 or data[:4] != b"MThd":
        return "not_midi", "not a Standard MIDI File (no 'MThd' header)"
    header_len, _fmt, num_tracks, division = struct.unpack(">IHHH", data[4:14])
    if header_len < 6:
        return "bad_header", f"corrupt header: MThd length {header_len} < 6"
    if division & 0x8000:
        return "bad_header", "SMPTE time division is not supported (ticks per quarter expected)"
    if division == 0:
        return "bad_header", "ticks per quarter is 0 in the MThd header"
    offset, found = 8 + header_len, 0
    while offset + 8 <= len(data):
        chunk_len = struct.unpack(">I", data[offset + 4 : offset + 8])[0]
        if offset + 8 + chunk_len > len(data):
            remaining = len(data) - offset - 8
            return "truncated", (
                f"truncated: chunk {found + 1} at byte {offset} declares {chunk_len} bytes "
                f"but only {remaining} remain"
            )
        found += data[offset : offset + 4] == b"MTrk"
        offset += 8 + chunk_len
    if found < num_tracks:
        return "truncated", (
            f"truncated: header declares {num_tracks} tracks but the file holds {found}"
        )
    return "", ""


def _parse_stats(report: FileReport, data: bytes) -> None:
    from symusic import Score

    try:
        score = Score.from_midi(data)
    except Exception as exc:  # symusic raises RuntimeError with MiniMidi's message
        message = str(exc).removeprefix("MiniMidi: ").removesuffix(": iostream error")
        report.fail("parse_error", f"parse error: {message}")
        return
    report.parse_ok = True
    report.ticks_per_quarter = int(score.tpq)
    report.tracks = len(score.tracks)
    report.notes = int(score.note_num())
    report.duration_seconds = float(score.to("second").end()) if report.notes else 0.0
    pitches = [note.pitch for track in score.tracks for note in track.notes]
    if pitches:
        report.min_pitch, report.max_pitch = min(pitches), max(pitches)
    if len(score.tempos):
        report.tempo_qpm = round(float(score.tempos[0].qpm), 3)
    if len(score.time_signatures):
        ts = score.time_signatures[0]
        report.time_signature = f"{ts.numerator}/{ts.denominator}"


def _content_error(report: FileReport, limits: Limits) -> tuple[str, str]:
    notes = report.notes or 0
    if notes == 0:
        return "no_notes", "no notes"
    if notes < limits.min_notes:
        return "too_few_notes", f"{notes} notes, fewer than validate.min_notes={limits.min_notes}"
    if notes > limits.max_notes:
        return "too_many_notes", f"{notes} notes, more than validate.max_notes={limits.max_notes}"
    duration = report.duration_seconds or 0.0
    if duration > limits.max_duration_seconds:
        return "too_long", (
            f"duration {duration:.0f} s exceeds validate.max_duration_seconds="
            f"{limits.max_duration_seconds:g} (absurd delta times?)"
        )
    if duration < limits.min_duration_seconds:
        return "too_short", (
            f"duration {duration:.2f} s is under validate.min_duration_seconds="
            f"{limits.min_duration_seconds:g}"
        )
    return "", ""


def inspect_file(root: Path, rel_path: str, limits: Limits) -> FileReport:
    """Build the manifest row of one file under root; never raises for a bad file."""
    report = FileReport(path=rel_path)
    path = root / rel_path
    if path.suffix.lower() not in MIDI_SUFFIXES:
        return report.fail("extension", f"not a MIDI file: extension {path.suffix or '(none)'!r}")
    try:
        report.bytes = path.stat().st_size
        if report.bytes > limits.max_file_bytes:
            return report.fail(
                "too_large",
                f"file is {report.bytes} bytes, "
                f"over validate.max_file_bytes={limits.max_file_bytes}",
            )
        data = path.read_bytes()
    except OSError as exc:
        return report.fail("unreadable", f"unreadable: {exc.strerror or exc}")
    report.sha256 = hashlib.sha256(data).hexdigest()
    if not data:
        return report.fail("empty", "empty file (0 bytes)")
    code, message = check_chunks(data)
    if code:
        return report.fail(code, message)
    _parse_stats(report, data)
    if report.parse_ok:
        report.fail(*_content_error(report, limits))
    return report
