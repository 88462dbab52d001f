"""Shared fixtures: real MIDI files (converted chorales and synthesised ones) and bad files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

# As `cadenza` does (cli.main), before torch loads OpenMP: idle threads sleep rather than spin,
# so tests running beside other work on a 2-core box are not stalled 10x by spinning threads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

from cadenza.config import ImportSettings
from cadenza.paths import Paths
from cadenza.stages import import_corpus as corpus_import

NUM_CHORALES = 4

# The suite runs on two pytest-xdist workers (pyproject.toml). Session fixtures are built once
# per worker, so every test that needs the Prefect API (the ~20 s harness and the ~150 s
# `registered_project` built on it) is sent to one worker; the rest spread over both.
SERIAL_FIXTURES = {"prefect_harness", "registered_project"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if SERIAL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("prefect"))


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
    from cadenza.stages import split as split_stage
    from cadenza.stages import tokenize as tokenize_stage
    from cadenza.stages import validate as validate_stage

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


PROJECT_ROOT = Path(__file__).resolve().parents[1]
TINY_STAGES = {
    "pretrain_discriminator": {
        "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "seq_len": 32,
        "batch_size": 4, "max_steps": 10, "warmup_steps": 2, "eval_interval": 5, "dropout": 0.0,
    },
    "adversarial": {
        "max_steps": 4, "batch_size": 2, "sample_batch": 2, "sample_len": 32, "chunk_len": 16,
        "eval_interval": 2, "checkpoint_interval": 2, "prime_tokens": 4, "adv_every": 1,
        "critic_warmup_steps": 2, "critic_eval_interval": 1, "critic_heldout": 8,
        "select_samples": 4, "select_sample_len": 32, "select_window_len": 16, "select_bins": 2,
        "select_folds": 2, "preference_pool": 8,
    },
    "evaluate": {
        "num_samples": 12, "sample_len": 48, "window_len": 16, "num_bins": 2,
        "min_documents": 2, "num_pieces": 4, "piece_len": 48, "gallery_size": 2, "folds": 2,
        "cv_repeats": 1, "bootstrap": 10, "generation_batch": 8, "render_audio": True,
    },
    # not plain: evaluate also scores plain sampling; the registered model carries this
    "sampling": {"temperature": 0.9, "top_k": 0, "top_p": 0.95},
}  # fmt: skip


def run_in(
    repo: Path, *command: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """A command in a test project, with this venv's tools first on PATH and the project's
    own MLflow store (unless env says otherwise)."""
    from cadenza.pipeline import dvc_env

    extra = env or {}
    env = dvc_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo / 'mlflow.db'}"
    env.update(extra)
    completed = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    if check:
        assert completed.returncode == 0, (
            f"{command} failed:\n{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}"
        )
    return completed


def make_project(root: Path, corpus: Path, mlflow_db: Path) -> Path:
    """A git + DVC project: our dvc.yaml and code, tiny params, a user corpus under DVC."""
    import yaml

    root.mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "dvc.yaml", root)
    shutil.copytree(
        PROJECT_ROOT / "src" / "cadenza",
        root / "src" / "cadenza",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copytree(  # dvc.yaml's pretrain depends on models/generator-<pretrain.init>
        PROJECT_ROOT / "models" / "generator-scratch", root / "models" / "generator-scratch"
    )
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    for name, values in project_params(Path("data/external/mine"), **TINY_STAGES).items():
        params.setdefault(name, {}).update(values)
    params["pretrain"].setdefault("presets", {})["tiny"] = TINY_PRESET
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(corpus, root / "data" / "external" / "mine")
    shutil.copy(mlflow_db, root / "mlflow.db")
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n.cadenza-registry.lock\n")
    run_in(root, "git", "init", "-q")
    run_in(root, "git", "config", "user.email", "ci@example.com")
    run_in(root, "git", "config", "user.name", "ci")
    run_in(root, "dvc", "init", "-q")
    run_in(root, "dvc", "remote", "add", "-d", "local", str(root.parent / "dvc-remote"))
    run_in(root, "dvc", "add", "-q", "data/external/mine")
    run_in(root, "git", "add", "-A")
    run_in(root, "git", "commit", "-qm", "project")
    return root


def small_corpus(folder: Path, chorale_dir: Path) -> Path:
    """4 chorales and 4 synthesised pieces (every split non-empty with seed 1)."""
    shutil.copytree(chorale_dir, folder, ignore=shutil.ignore_patterns("*.csv"))
    for i in range(4):
        make_midi(folder / f"synth{i}.mid", num_notes=64, pitch=48 + 3 * i)
    return folder


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (it takes ~20 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def registered_project(tmp_path_factory, chorale_dir, _mlflow_template, prefect_harness) -> dict:
    """A real project taken through the `retrain` Prefect flow (tiny models, real DVC
    stages): version 1 from the first corpus; then two files added to the user corpus and
    version 2 from the second corpus; then a third run with nothing changed."""
    from unittest import mock

    from cadenza import flows

    base = tmp_path_factory.mktemp("registered")
    corpus = small_corpus(base / "corpus", chorale_dir)
    repo = make_project(base / "repo", corpus, _mlflow_template)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    runs = {}
    with mock.patch.dict(os.environ, env):
        runs["first"] = flows.retrain(str(repo), return_state=True)
        first_lock = (repo / "dvc.lock").read_text()
        added = [
            make_midi(repo / "data/external/mine/new" / f"added{i}.mid", num_notes=48, pitch=55 + i)
            for i in range(2)
        ]
        run_in(repo, "git", "add", "-A")
        run_in(repo, "git", "commit", "-qm", "two more files")
        runs["second"] = flows.retrain(str(repo), return_state=True)
        runs["unchanged"] = flows.retrain(str(repo), return_state=True)
    for name, state in runs.items():
        assert state.is_completed(), f"{name} retrain: {state.message}"
    return {
        "repo": repo,
        "first_lock": first_lock,
        "added": added,
        "corpus": corpus,
        "runs": runs,
    }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, server: subprocess.Popen, log, timeout: float) -> None:
    """Poll url until it answers; fail with the server's output if it dies or times out."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert server.poll() is None, log()[-3000:]
            assert time.monotonic() < deadline, f"{url} did not answer in {timeout:.0f} s"
            time.sleep(0.5)


CADENZA = [sys.executable, "-m", "cadenza.cli"]


def kill_at_first_checkpoint(command: list[str], cwd: Path, state: Path) -> None:
    """Start a stage command, SIGKILL it as soon as it has written its resumable state, and
    check it really died by that signal."""
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
