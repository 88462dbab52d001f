"""Transfer learning on a tiny mix: a mixed corpus (two music21 corpora and a folder) through
the base pipeline into models/generator-base/, registered as cadenza-base; the target
(chorales) fine-tuned from it; the tokenizer mismatch error; the lineage chain through the
base; an incremental re-import that converts only the new file."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from cadenza.config import parse_settings
from cadenza.data.sources import SourceError, list_mix
from cadenza.paths import Paths
from cadenza.stages import import_corpus as corpus_import

from .conftest import TINY_PRESET, make_midi

MIX = ["music21:josquin", "music21:nottingham-dataset", "folder:extra"]
FEW_STEPS = {**TINY_PRESET, "max_steps": 8, "eval_interval": 8, "checkpoint_interval": 8}


def _base_params(**tokenize) -> dict:
    return {
        "import": {"corpus": "mix", "source": "mix", "mix": MIX, "num_workers": 1},
        "validate": {"max_bad_fraction": 0.5},
        "split": {"train": 0.6, "valid": 0.2, "test": 0.2, "seed": 1},
        "tokenize": {"transpositions": [], "time_stretches": [], "num_workers": 1, **tokenize},
        "pretrain": {"preset": "tiny", "presets": {"tiny": FEW_STEPS}},
        "register": {"model_name": "cadenza-base"},
    }


def _extra_folder(root: Path) -> Path:
    folder = root / "extra"
    for i in range(3):
        make_midi(folder / f"tune{i}.mid", num_notes=48, pitch=50 + 4 * i)
    return folder


@pytest.fixture(scope="module")
def base_project(tmp_path_factory, token_project, _mlflow_template) -> dict:
    """A project with the target's tokens (copied from token_project) and a base pipeline
    run for real on the tiny mix, tracked in its own MLflow store."""
    import os

    from cadenza.stages import pretrain as pretrain_stage
    from cadenza.stages import split as split_stage
    from cadenza.stages import tokenize as tokenize_stage
    from cadenza.stages import validate as validate_stage
    from cadenza.tracking import registry

    root = tmp_path_factory.mktemp("transfer")
    for part in ("data/raw/mine", "data/interim", "data/tokens"):
        shutil.copytree(token_project / part, root / part)
    _extra_folder(root)
    shutil.copy(_mlflow_template, root / "mlflow.db")
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    try:
        settings = parse_settings(_base_params())
        paths = Paths(root=root, corpus="mix", scope="base")
        imported = corpus_import.run(settings.import_, paths)
        validate_stage.run(settings.validate_, paths)
        split_stage.run(settings.split, paths)
        tokenize_stage.run(settings.tokenize, paths)
        base = pretrain_stage.run(settings.pretrain, paths)
        decision = registry.register_base(paths, settings.register_)
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    return {"root": root, "imported": imported, "base": base, "decision": decision}


def test_mix_lists_every_source_under_its_own_folder(tmp_path):
    files = list_mix(MIX, [], resolve=lambda p: _extra_folder(tmp_path))
    folders = {f.rel_path.split("/", 1)[0] for f in files}
    assert folders == {"josquin", "nottingham-dataset", "folder-extra"}
    assert all(f.piece.startswith(f.rel_path.split("/", 1)[0] + "/") for f in files)
    assert {f.composer for f in files if f.rel_path.startswith("folder-extra/")} == {"folder-extra"}
    everything = list_mix(["music21:*"], ["bach"])
    names = {f.rel_path.split("/", 1)[0] for f in everything}
    assert "bach" not in names and {"palestrina", "essenFolksong", "trecento"} <= names
    with pytest.raises(SourceError, match="import.mix_exclude names \\['bahc'\\]"):
        list_mix(["music21:*"], ["bahc"])
    with pytest.raises(SourceError, match="import.mix entry 'zip:x'"):
        list_mix(["zip:x"], [])


def test_base_pipeline_writes_the_base_and_registers_it(base_project):
    root = base_project["root"]
    assert base_project["imported"].num_files == 31 + 3
    base_dir = root / "models" / "generator-base"
    assert (base_dir / "model.safetensors").is_file() and (base_dir / "tokenizer.json").is_file()
    lineage = json.loads((base_dir / "lineage.json").read_text())
    assert lineage["corpus"] == "mix" and lineage["num_files"] == 34
    assert any(f["path"].startswith("josquin/") for f in lineage["files"])
    assert (root / "metrics" / "base" / "pretrain.json").is_file()
    assert (root / "data" / "tokens-base" / "train.npy").is_file()
    decision = base_project["decision"]
    assert decision.promoted and decision.version == "1"

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("cadenza-base", "champion")
    assert champion.run_id == lineage["mlflow_run_id"]


def _target_settings(init: str, **tokenize):
    from .conftest import project_params

    raw = project_params(Path("unused"), pretrain={"init": init}, tokenize=tokenize)
    raw["pretrain"]["presets"]["tiny"] = FEW_STEPS
    return parse_settings(raw)


def test_fine_tune_starts_from_the_base_and_lineage_chains_through_it(base_project, tracking_uri):
    import mlflow
    import torch

    from cadenza.stages import pretrain as pretrain_stage
    from cadenza.tracking import lineage as lin
    from cadenza.tracking.lineage import build_record
    from cadenza.training.checkpoint import read_config

    root = base_project["root"]
    shutil.copy(root / "mlflow.db", tracking_uri.removeprefix("sqlite:///"))
    paths = Paths(root=root, corpus="mine")
    settings = _target_settings("base")
    fine_tuned = pretrain_stage.run(settings.pretrain, paths)
    config = read_config(paths.generator_mle_dir)
    base_record = json.loads((paths.generator_mle_dir / "base.json").read_text())
    assert config["init"] == "base"
    assert config["init_from"]["weights_sha256"] == base_record["weights_sha256"]

    # The same steps from scratch end elsewhere: the start point mattered.
    scratch_paths = Paths(root=root / "scratch", corpus="mine")
    shutil.copytree(root / "data" / "tokens", scratch_paths.tokens_dir)
    scratch = pretrain_stage.run(_target_settings("scratch").pretrain, scratch_paths, track=False)
    assert not (scratch_paths.generator_mle_dir / "base.json").exists()
    assert abs(fine_tuned.test_nll - scratch.test_nll) > 1e-3

    # Lineage of a target version: both corpora; a base file finds the target version.
    (paths.metrics_dir / "validate.json").parent.mkdir(parents=True, exist_ok=True)
    record = build_record(paths, {"pretrain": {"init": "base"}})
    assert record["base"]["lineage"]["corpus"] == "mix"
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("cadenza").experiment_id
    run = client.create_run(experiment, run_name="evaluate")
    client.log_dict(run.info.run_id, record, lin.LINEAGE_FILE)
    client.create_registered_model("cadenza-generator")
    client.create_model_version("cadenza-generator", "unused", run_id=run.info.run_id)
    chain = lin.chain(client, "models:/cadenza-generator/1", "cadenza-generator")
    assert chain["corpus"] == "mine"
    assert chain["base"]["lineage"]["corpus"] == "mix"
    assert chain["base"]["version"]["name"] == "cadenza-base"
    assert "champion" in chain["base"]["version"]["aliases"]
    josquin = next(root.glob("data/raw/mix/josquin/*.mid"))
    hits = lin.versions_with_file(client, "cadenza-generator", josquin, None)
    assert [(h["version"], h["via"], h["corpus"]) for h in hits] == [("1", "base", "mix")]
    assert torch.isfinite(torch.tensor(fine_tuned.test_nll))


def test_another_tokenizer_fails_before_any_work(base_project, tmp_path):
    from cadenza.stages import pretrain as pretrain_stage
    from cadenza.tokens.tokenizer import build_tokenizer, load_tokenizer, uses_voice_programs

    root = base_project["root"]
    paths = Paths(root=tmp_path, corpus="mine")
    shutil.copytree(root / "models" / "generator-base", paths.base_model_dir)
    paths.tokens_dir.mkdir(parents=True)  # a tokenizer, no token arrays: any work would fail
    build_tokenizer("TSD", 8, (21, 109), 8).save(paths.tokens_dir / "tokenizer.json")
    with pytest.raises(ValueError) as error:
        pretrain_stage.run(_target_settings("base").pretrain, paths, track=False)
    message = str(error.value)
    assert "different tokenizers" in message
    assert str(paths.base_model_dir / "tokenizer.json") in message and "REMI" in message
    assert str(paths.tokens_dir / "tokenizer.json") in message and "TSD" in message
    assert not paths.generator_mle_dir.exists()
    # the same vocabulary, voices numbered on one side only: Program tokens would mean parts
    # on one side and instruments on the other
    base_voices = uses_voice_programs(load_tokenizer(paths.base_model_dir / "tokenizer.json"))
    build_tokenizer("REMI", 0, (21, 109), 8, voice_programs=not base_voices).save(
        paths.tokens_dir / "tokenizer.json"
    )
    with pytest.raises(ValueError, match="number voices differently") as error:
        pretrain_stage.run(_target_settings("base").pretrain, paths, track=False)
    assert f"tokenize.voice_programs: {base_voices} in" in str(error.value)
    assert not paths.generator_mle_dir.exists()


def test_reimport_converts_only_the_new_file(base_project, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(base_project["root"] / "data" / "raw" / "mix", root / "data" / "raw" / "mix")
    extra = root / "extra"
    shutil.copytree(base_project["root"] / "extra", extra)
    settings = parse_settings(_base_params()).import_
    paths = Paths(root=root, corpus="mix", scope="base")
    make_midi(extra / "new.mid", num_notes=40, pitch=62)
    result = corpus_import.run(settings, paths)
    assert (result.num_converted, result.num_reused, result.num_files) == (1, 34, 35)
    make_midi(extra / "tune0.mid", num_notes=41, pitch=55)  # changed content
    again = corpus_import.run(settings, paths)
    assert (again.num_converted, again.num_reused) == (1, 34)
    with (paths.raw_dir / "metadata.csv").open(newline="") as handle:
        rows = {r["path"]: r for r in csv.DictReader(handle)}
    assert rows["folder-extra/new.mid"]["source_sha256"]
    assert (paths.raw_dir / "folder-extra" / "tune0.mid").read_bytes() == (
        extra / "tune0.mid"
    ).read_bytes()


def test_batches_read_from_the_memory_map_match_the_concatenated_reference(tmp_path):
    import numpy as np

    from cadenza.training.data import SegmentBatches, epoch_stream

    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 40, size=30)  # empty documents too
    tokens = rng.integers(0, 500, size=int(lengths.sum())).astype(np.uint16)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    np.save(tmp_path / "train.npy", tokens)
    mapped = np.load(tmp_path / "train.npy", mmap_mode="r")
    batches = SegmentBatches(mapped, offsets, batch_size=3, seg_len=7, seed=5, rank=1, world_size=2)
    for step in range(3 * batches.batches_per_epoch):
        epoch, index = divmod(step, batches.batches_per_epoch)
        flat = epoch_stream(tokens, offsets, 5, epoch)
        inputs, targets, new_epoch = batches.batch(step)
        for row in range(3):
            begin = (3 + row) * batches.stream_len + index * 7
            assert inputs[row].tolist() == flat[begin : begin + 7].tolist()
            assert targets[row].tolist() == flat[begin + 1 : begin + 8].tolist()
        assert new_epoch == (index == 0)


def test_nightly_fetches_the_base_champion(base_project, tmp_path, monkeypatch):
    from cadenza.io import file_digest
    from cadenza.tracking.registry import RegistryError, fetch_base_champion

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(base_project["root"] / "mlflow.db", tmp_path / "mlflow.db")
    paths = Paths(root=tmp_path)
    note = fetch_base_champion(paths, "cadenza-base")
    assert "version 1 (champion) fetched" in note
    built = base_project["root"] / "models" / "generator-base" / "model.safetensors"
    assert file_digest(paths.base_model_dir / "model.safetensors") == file_digest(built)
    assert "already in" in fetch_base_champion(paths, "cadenza-base")
    with pytest.raises(RegistryError, match="cadenza-nothing has no champion"):
        fetch_base_champion(paths, "cadenza-nothing")
