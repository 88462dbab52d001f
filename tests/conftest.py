"""Shared fixtures: real MIDI files (converted chorales and synthesised ones) and bad files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cadenza.config import ImportSettings
from cadenza.data import corpus_import
from cadenza.paths import Paths

NUM_CHORALES = 4


@pytest.fixture(scope="session", autouse=True)
def _private_conversion_cache(tmp_path_factory):
    """Tests never read or fill the user's ~/.cache/cadenza (stage subprocesses inherit this)."""

    saved = os.environ.get("CADENZA_CACHE_DIR")
    os.environ["CADENZA_CACHE_DIR"] = str(tmp_path_factory.mktemp("conversion-cache"))
    yield
    if saved is None:
        os.environ.pop("CADENZA_CACHE_DIR", None)
    else:
        os.environ["CADENZA_CACHE_DIR"] = saved


def make_midi(
    path: Path, num_notes: int = 32, tpq: int = 480, pitch: int = 60, gap_ticks: int = 480
) -> Path:
    """Write a small real MIDI file with symusic: a rising line of quarter notes."""
    from symusic import Note, Score, Tempo, TimeSignature, Track

    score = Score(tpq)
    score.tempos.append(Tempo(0, 120.0))
    score.time_signatures.append(TimeSignature(0, 4, 4))
    track = Track("piano", 0, False)
    for i in range(num_notes):
        track.notes.append(Note(i * gap_ticks, tpq, pitch + i % 12, 80))
    score.tracks.append(track)
    path.parent.mkdir(parents=True, exist_ok=True)
    score.dump_midi(str(path))
    return path


@pytest.fixture(scope="session")
def chorale_dir(tmp_path_factory) -> Path:
    """A few Bach chorales converted from music21's corpus by the real import stage."""
    root = tmp_path_factory.mktemp("chorales")
    settings = ImportSettings(corpus="bach", limit=NUM_CHORALES, num_workers=2)
    corpus_import.run(settings, Paths(root=root, corpus="bach"))
    return root / "data" / "raw" / "bach"


def write_bad_files(folder: Path) -> dict[str, str]:
    """One file per kind of bad input; returns {relative path: expected reason_code}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = make_midi(folder / "_good_tmp.mid").read_bytes()
    (folder / "_good_tmp.mid").unlink()
    (folder / "truncated.mid").write_bytes(good[: len(good) // 2])
    (folder / "random_bytes.mid").write_bytes(bytes(range(256)) * 3)
    (folder / "empty.mid").write_bytes(b"")
    (folder / "tpq_zero.mid").write_bytes(good[:12] + b"\x00\x00" + good[14:])
    make_midi(folder / "no_notes.mid", num_notes=0)
    # Notes hours apart, three days in all: absurd delta times.
    make_midi(folder / "absurd_delta.mid", num_notes=9, gap_ticks=480 * 2 * 60 * 60 * 24 * 3 // 8)
    (folder / "notes.txt").write_text("not music\n")
    make_midi(folder / "huge.mid", num_notes=4000)  # over the size limit the tests set
    return {
        "truncated.mid": "truncated",
        "random_bytes.mid": "not_midi",
        "empty.mid": "empty",
        "tpq_zero.mid": "bad_header",
        "no_notes.mid": "no_notes",
        "absurd_delta.mid": "too_long",
        "notes.txt": "extension",
        "huge.mid": "too_large",
    }


@pytest.fixture
def mixed_folder(tmp_path, chorale_dir) -> tuple[Path, dict[str, str]]:
    """A user folder: real chorales in a subfolder, plus every kind of bad file."""
    folder = tmp_path / "user_midi"
    shutil.copytree(chorale_dir, folder / "chorales", ignore=shutil.ignore_patterns("*.csv"))
    expected = write_bad_files(folder / "bad")
    return folder, {f"bad/{name}": code for name, code in expected.items()}


TINY_PRESET = {
    "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "seg_len": 32, "mem_len": 32,
    "dropout": 0.0, "batch_size": 2, "max_steps": 24, "lr": 0.003, "warmup_steps": 4,
    "eval_interval": 12, "checkpoint_interval": 6, "log_interval": 4,
}  # fmt: skip


def project_params(corpus_path: Path, **sections) -> dict:
    """params.yaml content for a small test project built from a MIDI folder."""
    params = {
        "import": {
            "corpus": "mine",
            "source": "folder",
            "path": str(corpus_path),
            "num_workers": 1,
        },
        "split": {"train": 0.5, "valid": 0.25, "test": 0.25, "seed": 1},
        "tokenize": {"transpositions": [-1, 1], "time_stretches": [], "num_workers": 1},
        "pretrain": {"preset": "tiny", "presets": {"tiny": TINY_PRESET}},
    }
    for name, values in sections.items():
        params.setdefault(name, {}).update(values)
    return params


@pytest.fixture(scope="session")
def token_project(tmp_path_factory, chorale_dir) -> Path:
    """A project folder taken by the real stages through tokenize: 4 chorales plus 4 small
    synthesized pieces, every split non-empty."""
    import yaml

    from cadenza.config import parse_settings
    from cadenza.data import split as split_stage
    from cadenza.tokens import stage as tokenize_stage
    from cadenza.validation import stage as validate_stage

    root = tmp_path_factory.mktemp("token-project")
    corpus = root / "corpus"
    shutil.copytree(chorale_dir, corpus, ignore=shutil.ignore_patterns("*.csv"))
    for i in range(4):
        make_midi(corpus / f"synth{i}.mid", num_notes=64, pitch=48 + 3 * i)
    raw = project_params(corpus)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    settings = parse_settings(raw)
    paths = Paths(root=root, corpus="mine")
    corpus_import.run(settings.import_, paths)
    validate_stage.run(settings.validate_, paths)
    split = split_stage.run(settings.split, paths)
    assert all(split.num_files.values()), split.num_files
    tokenize_stage.run(settings.tokenize, paths)
    return root


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """One migrated MLflow SQLite store; tests get copies (migration costs seconds)."""
    import mlflow

    folder = tmp_path_factory.mktemp("mlflow-template")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=uri).search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def tracking_uri(tmp_path, _mlflow_template, monkeypatch) -> str:
    """A fresh MLflow store for this test, set as MLFLOW_TRACKING_URI."""
    db = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
