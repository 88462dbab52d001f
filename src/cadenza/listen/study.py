"""A study folder: equal-length audio clips from two sources, named by opaque random ids.

    <study>/study.json   private manifest: the sources, which clip came from which, the pairs
    <study>/secret.key   signs listener cookies and CSRF tokens (never served)
    <study>/clips/<id>.<mp3|ogg|wav>   the only files the app serves

A source is a generator (a checkpoint folder, or a models:/ or runs:/ URI) that writes fresh
pieces, or a folder of MIDI files (real music). Nothing a listener sees (page, URL, file name,
clip length) says which source a clip came from: ids are random, both clips of a pair are cut
or padded to exactly `clip_seconds`, and which one plays first is drawn at random.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cadenza import audio
from cadenza.audio import AudioSpec
from cadenza.generate import load_generator, resolve_model_dir, sample_score
from cadenza.tracking.runs import client, tracking_uri

log = logging.getLogger(__name__)

MANIFEST = "study.json"
SECRET = "secret.key"
CLIPS = "clips"
SIDES = ("a", "b")


@dataclass(frozen=True)
class Study:
    folder: Path
    manifest: dict

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def pairs(self) -> dict[str, dict]:
        return {pair["id"]: pair for pair in self.manifest["pairs"]}

    @property
    def clips(self) -> dict[str, dict]:
        return self.manifest["clips"]

    @property
    def secret(self) -> str:
        return (self.folder / SECRET).read_text().strip()

    def clip_path(self, clip_id: str) -> Path | None:
        """The clip's file, or None for an id not in this study or a path leaving clips/."""
        clip = self.clips.get(clip_id)
        if clip is None:
            return None
        root = (self.folder / CLIPS).resolve()
        path = (self.folder / clip["file"]).resolve()
        return path if path.is_relative_to(root) and path.is_file() else None


def load_study(folder: Path | str) -> Study:
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file() or not (folder / SECRET).is_file():
        raise ValueError(
            f"{folder}: not a listening study (no {MANIFEST} / {SECRET}); "
            "build one with `cadenza listen build`"
        )
    return Study(folder, json.loads(manifest.read_text()))


def describe_source(source: str, root: Path) -> dict:
    """What a source is, for the manifest and for MLflow: kind, and registry name/version."""
    if source.startswith("models:/"):
        spec = source.removeprefix("models:/")
        if "@" in spec:
            name, alias = spec.split("@", 1)
            version = client(root).get_model_version_by_alias(name, alias)
        else:
            name, _, number = spec.partition("/")
            version = client(root).get_model_version(name, number)
        return {
            "source": source,
            "kind": "model",
            "model_name": name,
            "model_version": str(version.version),
            "run_id": version.run_id,
        }
    if source.startswith("runs:/"):
        return {"source": source, "kind": "model", "run_id": source.split("/")[1]}
    folder = Path(source)
    if (folder / "config.json").is_file():
        return {"source": source, "kind": "model"}
    if folder.is_dir() and any(folder.rglob("*.mid")):
        return {"source": source, "kind": "midi"}
    raise ValueError(
        f"listen source {source!r}: not a models:/ or runs:/ URI, a checkpoint folder "
        "(with config.json) or a folder of .mid files"
    )


def source_midi(source: dict, count: int, settings, workdir: Path, seed: int) -> list[Path]:
    """`count` MIDI files from a source: generated pieces, or files drawn from a folder."""
    if source["kind"] == "midi":
        files = sorted(Path(source["source"]).rglob("*.mid"))
        if len(files) < count:
            raise ValueError(f"{source['source']}: {len(files)} MIDI files, a study needs {count}")
        return random.Random(seed).sample(files, count)
    net, tokenizer = load_generator(resolve_model_dir(source["source"], workdir))
    out = []
    for index in range(count):
        score, _ = sample_score(
            net, tokenizer, settings.piece_tokens, settings.sampling.value, seed + index
        )
        path = workdir / f"{secrets.token_hex(8)}.mid"
        score.dump_midi(str(path))
        out.append(path)
    return out


def matched_midi(sources: dict, count: int, seed: int) -> tuple[dict[str, list[Path]], list]:
    """Two MIDI folders whose k-th files (in name order) are versions of one piece, such as
    the evaluation gallery's `tasks_bach/` and `tasks_harmonized/` (Bach's harmonization and
    the model's of the same soprano): `count` pieces drawn, each side's version of each."""
    files = {}
    for side, source in sources.items():
        if source["kind"] != "midi":
            raise ValueError(
                f"--matched pairs two folders of MIDI files; {source['source']!r} is not one"
            )
        files[side] = sorted(Path(source["source"]).rglob("*.mid"))
    a, b = files["a"], files["b"]
    if len(a) != len(b):
        raise ValueError(
            f"--matched: {sources['a']['source']} has {len(a)} MIDI files and "
            f"{sources['b']['source']} {len(b)}; the k-th file of each must be the same piece"
        )
    if len(a) < count:
        raise ValueError(
            f"--matched: {len(a)} pieces in each folder, a study needs listen.num_pairs = {count}"
        )
    picked = sorted(random.Random(seed).sample(range(len(a)), count))
    names = [[a[i].name, b[i].name] for i in picked]
    return {"a": [a[i] for i in picked], "b": [b[i] for i in picked]}, names


def build_study(
    folder: Path, source_a: str, source_b: str, settings, root: Path, matched: bool = False
) -> Study:
    """Render settings.num_pairs clips from each source and pair them blind. `root`: the
    project whose MLflow store resolves models:/ and runs:/ sources. matched: the sources
    are two MIDI folders of versions of the same pieces, and each pair plays one piece's
    two versions (matched_midi)."""
    if (folder / MANIFEST).exists():
        raise ValueError(f"{folder}: a study is already there; choose another folder")
    spec = AudioSpec(settings.synthesizer, settings.audio_format)
    if reason := audio.unavailable_reason(spec):
        raise ValueError(f"cannot render clips: {reason}")
    if any(s.startswith(("models:/", "runs:/")) for s in (source_a, source_b)):
        import mlflow  # lazy: heavy, and only a models:/ or runs:/ source needs it

        mlflow.set_tracking_uri(tracking_uri(root))
        mlflow.set_registry_uri(tracking_uri(root))
    sources = {"a": describe_source(source_a, root), "b": describe_source(source_b, root)}
    if matched:
        given, piece_names = matched_midi(sources, settings.num_pairs, settings.seed)
    rng = random.Random(settings.seed)
    (folder / CLIPS).mkdir(parents=True)
    clips: dict[str, dict] = {}
    by_side: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for offset, side in enumerate(SIDES):
            midi = given[side] if matched else source_midi(
                sources[side], settings.num_pairs, settings, Path(tmp), settings.seed + offset
            )  # fmt: skip
            by_side[side] = []
            for path in midi:
                clip_id = secrets.token_hex(8)
                file = f"{CLIPS}/{clip_id}{spec.suffix}"
                audio.render(path, folder / file, spec, seconds=settings.clip_seconds)
                clips[clip_id] = {"side": side, "file": file}
                by_side[side].append(clip_id)
    pairs, pieces = [], {}
    for index, (clip_a, clip_b) in enumerate(zip(by_side["a"], by_side["b"], strict=True)):
        left, right = (clip_a, clip_b) if rng.random() < 0.5 else (clip_b, clip_a)
        pairs.append({"id": secrets.token_hex(8), "left": left, "right": right})
        if matched:  # kept out of the pairs: the page shows pairs, never file names
            pieces[pairs[-1]["id"]] = piece_names[index]
    rng.shuffle(pairs)
    manifest = {
        "name": folder.name,
        "clip_seconds": settings.clip_seconds,
        "format": spec.format,
        "mime": spec.mime,
        "ask_human": settings.ask_human,
        "sources": sources,
        "clips": clips,
        "pairs": pairs,
        "matched": pieces,  # pair id -> [file of a, file of b], for matched studies
        "admin_token": secrets.token_urlsafe(24),
    }
    (folder / SECRET).write_text(secrets.token_urlsafe(32) + "\n")
    (folder / SECRET).chmod(0o600)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    log.info("study %s: %d pairs of %.0f s clips", folder, len(pairs), settings.clip_seconds)
    return load_study(folder)
