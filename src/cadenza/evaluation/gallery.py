"""Samples gallery: MIDI files, piano-roll PNGs, audio renders (cadenza.audio: TinySoundFont
and a bundled General MIDI soundfont by default, MP3) and one HTML page comparing the models
side by side, with a player under each piano roll."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from joblib import Parallel, delayed

from cadenza import audio
from cadenza.audio import AudioSpec


@dataclass
class GalleryItem:
    midi: Path
    png: Path
    audio: Path | None


@dataclass
class Gallery:
    items: dict[str, list[GalleryItem]] = field(default_factory=dict)
    audio_note: str = ""


def piano_roll_png(score, path: Path, title: str) -> None:
    import matplotlib  # lazy: slow to import; only figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as matplotlib
    import numpy as np
    from matplotlib.collections import PolyCollection

    tpq = float(score.ticks_per_quarter)
    fig, ax = plt.subplots(figsize=(8, 2.6), dpi=80)
    for index, track in enumerate(score.tracks):
        notes = track.notes.numpy()
        start = notes["time"] / tpq
        end = start + np.maximum(notes["duration"] / tpq, 0.05)
        low, high = notes["pitch"] - 0.4, notes["pitch"] + 0.4
        boxes = np.stack(  # one rectangle per note, all of a track in one collection
            [np.c_[start, low], np.c_[start, high], np.c_[end, high], np.c_[end, low]], axis=1
        )
        ax.add_collection(PolyCollection(boxes, color=f"C{index % 10}"))
    ax.autoscale_view()
    ax.set_xlabel("beats")
    ax.set_ylabel("pitch")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_gallery(
    scores: dict[str, list], out_dir: Path, render_audio: bool, spec: AudioSpec | None = None
) -> Gallery:
    """scores: set name -> Scores. Writes <out_dir>/<set>/<set>_<i>.{mid,png,mp3|ogg|wav}."""
    spec = spec or AudioSpec()
    gallery = Gallery()
    if not render_audio:
        gallery.audio_note = "audio rendering switched off (evaluate.render_audio: false)"
    elif reason := audio.unavailable_reason(spec):
        gallery.audio_note = f"no audio: {reason}"
    for name, pieces in scores.items():
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        gallery.items[name] = []
        for index, score in enumerate(pieces):
            midi = folder / f"{name}_{index}.mid"
            png = folder / f"{name}_{index}.png"
            score.dump_midi(str(midi))
            piano_roll_png(score, png, f"{name} #{index}")
            sound = None if gallery.audio_note else midi.with_suffix(spec.suffix)
            gallery.items[name].append(GalleryItem(midi, png, sound))
    sounds = [item for items in gallery.items.values() for item in items if item.audio]
    # Synthesis and encoding in two processes (the same files as in one, in half the time).
    jobs = 2 if len(sounds) >= 4 else 1
    Parallel(n_jobs=jobs)(delayed(audio.render)(i.midi, i.audio, spec) for i in sounds)
    return gallery


def _row(cells: list[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def write_report(
    path: Path,
    title: str,
    table: dict[str, dict[str, str]],
    gallery: Gallery,
    extra_html: str = "",
) -> None:
    """table: row label -> {column: formatted value}; extra_html goes after the table;
    gallery paths are made relative."""
    columns = list(dict.fromkeys(c for row in table.values() for c in row))
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        ".sets{display:flex;gap:1em}.set{flex:1}img{width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><table>",
        _row(["model", *map(html.escape, columns)], "th"),
    ]
    for label, row in table.items():
        parts.append(_row([html.escape(label), *(html.escape(row.get(c, "")) for c in columns)]))
    parts.append("</table>")
    parts.append(extra_html)
    parts.append("<h2>Samples</h2>")
    if gallery.audio_note:
        parts.append(f"<p><em>{html.escape(gallery.audio_note)}</em></p>")
    parts.append("<div class='sets'>")
    for name, items in gallery.items.items():
        parts.append(f"<div class='set'><h3>{html.escape(name)}</h3>")
        for item in items:
            rel = lambda p: html.escape(os.path.relpath(p, path.parent))  # noqa: E731
            parts.append(f"<p><img src='{rel(item.png)}' alt='{rel(item.midi)}'><br>")
            parts.append(f"<a href='{rel(item.midi)}'>{html.escape(item.midi.name)}</a>")
            if item.audio:
                parts.append(
                    f"<br><audio controls preload='metadata' src='{rel(item.audio)}'></audio>"
                )
            parts.append("</p>")
        parts.append("</div>")
    parts.append("</div></body></html>\n")
    path.write_text("".join(parts))
