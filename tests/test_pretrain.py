"""pretrain: NLL training with memory, MLflow tracking, best checkpoint, resume after
SIGKILL, DDP on CPU with gloo, baselines, and `cadenza generate`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

from cadenza.config import parse_settings
from cadenza.paths import Paths
from cadenza.stages import pretrain as pretrain_stage
from cadenza.training.baselines import NGramModel, unigram_nll

from .conftest import CADENZA, TINY_PRESET, kill_at_first_checkpoint


def _project(token_project: Path, dest: Path, **preset) -> Path:
    """A copy of the tokenized project whose tiny preset is adjusted."""
    shutil.copytree(token_project, dest, ignore=shutil.ignore_patterns("models", "mlflow.db"))
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["pretrain"]["presets"]["tiny"] = {**TINY_PRESET, **preset}
    (dest / "params.yaml").write_text(yaml.safe_dump(params))
    return dest


def _settings(root: Path):
    return parse_settings(yaml.safe_load((root / "params.yaml").read_text()))


def test_pretrain_tracks_and_keeps_the_best_checkpoint(token_project, tmp_path, tracking_uri):
    import mlflow

    root = _project(token_project, tmp_path / "p", max_steps=40, eval_interval=10)
    result = pretrain_stage.run(_settings(root).pretrain, Paths(root=root, corpus="mine"))

    out = root / "models" / "generator-mle"
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["d_model"] == 32 and config["best_step"] in (10, 20, 30, 40)
    assert (out / "tokenizer.json").is_file() and (out / "last" / "state.pt").is_file()
    metrics = json.loads((root / "metrics" / "pretrain.json").read_text())
    assert metrics["test_nll"] == pytest.approx(result.test_nll)
    assert metrics["best_valid_nll"] == pytest.approx(config["valid_nll"])
    assert result.test_nll < np.log(config["model"]["vocab_size"])  # learned something
    curve = (root / "reports" / "pretrain" / "loss.csv").read_text().splitlines()
    assert curve[0].startswith("step,train_nll,valid_nll") and len(curve) > 5

    client = mlflow.MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cadenza").experiment_id])
    assert run.data.tags["cadenza.stage"] == "pretrain"
    assert run.data.tags["git.commit"] and "dvc.tokens_md5" in run.data.tags
    assert run.data.params["preset.d_model"] == "32"
    valid_history = client.get_metric_history(run.info.run_id, "valid_nll")
    assert [m.step for m in valid_history] == [10, 20, 30, 40]
    assert len(client.get_metric_history(run.info.run_id, "train_nll")) == 10
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "generator-mle")}
    assert "generator-mle/model.safetensors" in artifacts

    # The logged checkpoint is self-contained: generate straight from the run's artifacts.
    from cadenza.generate import generate_midi

    sample = generate_midi(f"runs:/{run.info.run_id}/generator-mle", 64, tmp_path / "s.mid")
    assert sample.out_path.is_file() and len(sample.token_ids) <= 64


def test_sigkill_then_rerun_resumes_to_the_same_weights(token_project, tmp_path, tracking_uri):
    preset = {"max_steps": 60, "checkpoint_interval": 5, "eval_interval": 30, "dropout": 0.1}
    straight = _project(token_project, tmp_path / "straight", **preset)
    killed = _project(token_project, tmp_path / "killed", **preset)
    pretrain_stage.run(
        _settings(straight).pretrain, Paths(root=straight, corpus="mine"), track=False
    )

    command = [*CADENZA, "pretrain", "--params", "params.yaml"]
    kill_at_first_checkpoint(
        command, killed, killed / "models" / "generator-mle" / "last" / "state.pt"
    )

    subprocess.run(command, cwd=killed, check=True, capture_output=True)
    resumed_from = json.loads((killed / "metrics" / "pretrain.json").read_text())[
        "resumed_from_step"
    ]
    assert 0 < resumed_from < 60
    for name in ("last/model.safetensors", "model.safetensors"):
        a = load_file(straight / "models" / "generator-mle" / name)
        b = load_file(killed / "models" / "generator-mle" / name)
        assert a.keys() == b.keys()
        assert all((a[k] == b[k]).all() for k in a), name


def test_changed_settings_start_afresh(token_project, tmp_path):
    root = _project(token_project, tmp_path / "p", max_steps=12)
    paths = Paths(root=root, corpus="mine")
    pretrain_stage.run(_settings(root).pretrain, paths, track=False)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["pretrain"]["presets"]["tiny"]["lr"] = 0.001
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    pretrain_stage.run(_settings(root).pretrain, paths, track=False)
    assert json.loads((root / "metrics" / "pretrain.json").read_text())["resumed_from_step"] == 0
    # Starting afresh over a stale checkpoint gives exactly what a clean run gives.
    stale = (root / "models" / "generator-mle" / "model.safetensors").read_bytes()
    clean = _project(token_project, tmp_path / "clean", max_steps=12, lr=0.001)
    pretrain_stage.run(_settings(clean).pretrain, Paths(root=clean, corpus="mine"), track=False)
    assert (clean / "models" / "generator-mle" / "model.safetensors").read_bytes() == stale
    # Another architecture: last/'s weights do not even fit the model; they are never loaded.
    params["pretrain"]["presets"]["tiny"]["d_ff"] = 48
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    pretrain_stage.run(_settings(root).pretrain, paths, track=False)
    assert json.loads((root / "metrics" / "pretrain.json").read_text())["resumed_from_step"] == 0


def test_ddp_on_cpu_with_two_gloo_processes(token_project, tmp_path):
    root = _project(token_project, tmp_path / "p", max_steps=12, batch_size=1)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}",
        "OMP_NUM_THREADS": "1",
    }
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29731", "-m", "cadenza.cli", "pretrain", "--params", "params.yaml"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    metrics = json.loads((root / "metrics" / "pretrain.json").read_text())
    assert metrics["steps"] == 12 and np.isfinite(metrics["test_nll"])
    assert (root / "models" / "generator-mle" / "model.safetensors").is_file()
    assert completed.stdout.count("test NLL") == 1  # rank 0 alone reports


def test_baselines_are_normalised_and_ordered():
    rng = np.random.default_rng(0)
    # A Markov chain the n-gram model can learn and the unigram cannot.
    train = np.cumsum(rng.integers(0, 2, 20_000)) % 7
    test = np.cumsum(rng.integers(0, 2, 2_000)) % 7
    model = NGramModel(train, vocab_size=7, order=3)
    assert model.nll(test) < unigram_nll(train, test, 7)
    for context in ([3, 4], [0, 0], [6, 2]):  # seen and unseen contexts
        probs = [model.probabilities(np.array([*context, w]))[-1] for w in range(7)]
        assert sum(probs) == pytest.approx(1.0)


def test_generate_writes_midi_with_and_without_primer(token_project, tmp_path, chorale_dir):
    root = _project(token_project, tmp_path / "p", max_steps=12)
    pretrain_stage.run(_settings(root).pretrain, Paths(root=root, corpus="mine"), track=False)
    from symusic import Score

    model_dir = str(root / "models" / "generator-mle")
    out = tmp_path / "x.mid"
    command = [*CADENZA, "generate", "--model", model_dir, "--tokens", "300", "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert out.is_file() and "wrote" in run.stdout
    primer = next(chorale_dir.glob("*.mid"))
    primed = tmp_path / "primed.mid"
    command = [*CADENZA, "generate", "-m", model_dir, "-n", "64", "-o", str(primed),
               "--primer", str(primer), "--primer-tokens", "40", "--audio", "mp3"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert Score(str(primed)).note_num() >= 5  # the primer's opening notes at least
    from cadenza.audio import TAIL_SECONDS, duration_seconds

    seconds = Score(str(primed)).to("second").end() + TAIL_SECONDS
    assert duration_seconds(primed.with_suffix(".mp3")) == pytest.approx(seconds, abs=0.15)
    missing = subprocess.run(
        [*CADENZA, "generate", "-m", str(tmp_path)], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "not a checkpoint folder" in missing.stderr


def test_cpu_bf16_trains_under_autocast_and_measures_nll_in_fp32(token_project, tmp_path):
    """pretrain.cpu_bf16: the training steps run under CPU bf16 autocast (the weights differ
    from the fp32 run's, still learn, and the metrics say so); the model's bf16 logits stay
    close to its fp32 ones; validation NLL is fp32 either way (the same weights give the
    same NLL with the setting on or off); a bad value is refused by name."""
    import torch

    from cadenza.generate import load_generator
    from cadenza.tokens.store import load_split
    from cadenza.training.pretrain import autocast_context, evaluate_nll

    runs = {}
    for name, setting in (("fp32", False), ("bf16", True)):
        root = _project(token_project, tmp_path / name, max_steps=12)
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["pretrain"]["cpu_bf16"] = setting
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        result = pretrain_stage.run(
            _settings(root).pretrain, Paths(root=root, corpus="mine"), track=False
        )
        metrics = json.loads((root / "metrics" / "pretrain.json").read_text())
        assert metrics["cpu_bf16"] is setting
        runs[name] = (root, result)
    weights = {
        n: load_file(r / "models/generator-mle/model.safetensors") for n, (r, _) in runs.items()
    }
    assert any(not torch.equal(weights["fp32"][k], weights["bf16"][k]) for k in weights["fp32"])
    vocab = json.loads((runs["bf16"][0] / "models/generator-mle/config.json").read_text())
    assert runs["bf16"][1].test_nll < np.log(vocab["model"]["vocab_size"])
    assert runs["bf16"][1].test_nll == pytest.approx(runs["fp32"][1].test_nll, rel=0.1)

    net, _ = load_generator(runs["bf16"][0] / "models" / "generator-mle")
    tokens, _ = load_split(runs["bf16"][0] / "data" / "tokens", "valid")
    window = torch.from_numpy(tokens[:33].astype(np.int64))[None]
    with torch.no_grad():
        plain, _ = net(window)
        with autocast_context(torch.device("cpu"), cpu_bf16=True):
            fast, _ = net(window)
    assert fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float().softmax(-1), plain.softmax(-1), atol=0.02, rtol=0)
    # The saved validation NLL is what fp32 gives for the saved weights (same batching).
    saved = json.loads((runs["bf16"][0] / "models/generator-mle/config.json").read_text())
    seg_len, batch = net.config.seg_len, saved["train"]["batch_size"]
    eval_batch = max(1, min(batch, (len(tokens) - 1) // (seg_len + 1)))
    nll = evaluate_nll(net, tokens, seg_len, torch.device("cpu"), eval_batch)
    assert nll == pytest.approx(saved["valid_nll"], rel=1e-6)
    with pytest.raises(Exception, match="cpu_bf16"):
        parse_settings({"pretrain": {"cpu_bf16": "maybe"}})


def test_final_phase_trains_on_the_original_documents(tmp_path):
    """train(final_data=...): the last final_original_steps steps read final_data only. Two
    disjoint vocabularies make it visible: after a final phase on the second one the model
    puts most next-token mass there; without the phase, on the first. A phase without data
    is refused."""
    import torch

    from cadenza.models.generator import GeneratorConfig, TransformerXL
    from cadenza.training import checkpoint
    from cadenza.training.pretrain import TrainConfig, train

    rng = np.random.default_rng(0)

    def corpus(low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
        docs = [np.r_[1, rng.integers(low, high, 60), 2] for _ in range(8)]
        offsets = np.r_[0, np.cumsum([len(d) for d in docs])]
        return np.concatenate(docs).astype(np.uint16), offsets

    first, second = corpus(3, 10), corpus(10, 17)
    model_config = GeneratorConfig(
        vocab_size=17, d_model=32, n_layers=1, n_heads=2, d_ff=64, seg_len=16, mem_len=16,
        dropout=0.0, bos_id=1,
    )  # fmt: skip
    mass = {}
    for final_steps in (0, 40):
        config = TrainConfig(
            batch_size=4, max_steps=60, lr=3e-3, warmup_steps=0, eval_interval=60,
            checkpoint_interval=60, final_original_steps=final_steps, device="cpu",
        )  # fmt: skip
        out = tmp_path / f"final-{final_steps}"
        train(model_config, config, first, first[0], out, final_data=second)
        net = TransformerXL(model_config)
        checkpoint.load_weights(net, out)
        net.eval()
        with torch.no_grad():
            logits, _ = net(torch.tensor([[1]]))  # what follows [BOS]
        probs = logits[0, -1].softmax(-1)
        mass[final_steps] = float(probs[10:17].sum())
    assert mass[0] < 0.1 and mass[40] > 0.5, mass
    with pytest.raises(ValueError, match="final_data"):
        train(model_config, TrainConfig(max_steps=4, final_original_steps=2), first, first[0],
              tmp_path / "none")  # fmt: skip


def test_muon_steps_the_matrices_and_adamw_the_rest():
    """optimizer muon: the blocks' weight matrices in torch's Muon, everything else (the tied
    embedding, biases, norms) in AdamW, each parameter once; the schedule sets both parts'
    learning rate; a saved state loads back, and another optimizer's state is refused."""
    import torch

    from cadenza.models.generator import GeneratorConfig, TransformerXL
    from cadenza.training.pretrain import Optimizers, TrainConfig, build_optimizer, lr_factor

    model = TransformerXL(GeneratorConfig(
        vocab_size=17, d_model=32, n_layers=2, n_heads=2, d_ff=64, seg_len=16, mem_len=16
    ))  # fmt: skip
    config = TrainConfig(max_steps=10, lr=0.01, warmup_steps=4, optimizer="muon")
    optimizer = build_optimizer(model, config)
    muon, adamw = optimizer.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert not in_muon & in_adamw and in_muon | in_adamw == set(names)
    assert all(names[i].startswith("blocks.") and "weight" in names[i] for i in in_muon)
    assert any(n == "embedding.weight" for n in map(names.get, in_adamw))
    assert len(in_muon) == 2 * 5  # per block: query, key_value, out, two feed-forward layers

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    tokens = torch.randint(0, 17, (2, 17))
    for _ in range(3):
        logits, _ = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    expected = config.lr * lr_factor(3, config)
    assert muon.param_groups[0]["lr"] == pytest.approx(expected)
    assert adamw.param_groups[0]["lr"] == pytest.approx(expected)

    again = build_optimizer(model, config)
    again.load_state_dict(optimizer.state_dict())
    resumed = torch.optim.lr_scheduler.LambdaLR(again, lambda s: lr_factor(s, config))
    resumed.load_state_dict(scheduler.state_dict())
    resumed.step()  # a resumed schedule reaches the loaded parts' groups
    assert again.optimizers[0].param_groups[0]["lr"] == pytest.approx(
        config.lr * lr_factor(4, config)
    )
    assert torch.equal(
        again.optimizers[0].state_dict()["state"][0]["momentum_buffer"],
        muon.state_dict()["state"][0]["momentum_buffer"],
    )
    adamw_only = build_optimizer(model, TrainConfig(optimizer="adamw"))
    assert not isinstance(adamw_only, Optimizers)
    with pytest.raises(ValueError, match="pretrain.optimizer"):
        again.load_state_dict(adamw_only.state_dict())


def test_muon_orthogonalizes_in_fp32_where_bf16_is_not_native():
    """Muon(ns_dtype=bf16) is torch's Muon step for step; with fp32 (a CPU without native bf16
    matmuls) it takes the same steps to within bf16's rounding, and its Newton-Schulz output
    has the singular values Muon's coefficients aim at (about 0.7 to 1.2), wide or tall."""
    import torch

    from cadenza.training.pretrain import Muon, newton_schulz

    torch.manual_seed(0)
    start = [torch.randn(24, 40), torch.randn(40, 24)]
    grads = [[torch.randn_like(w) for w in start] for _ in range(3)]

    def trained(make):
        weights = [w.clone().requires_grad_() for w in start]
        optimizer = make(weights)
        for step_grads in grads:
            for w, g in zip(weights, step_grads, strict=True):
                w.grad = g.clone()
            optimizer.step()
        return [w.detach() for w in weights]

    kwargs = {"lr": 0.01, "weight_decay": 0.01, "adjust_lr_fn": "match_rms_adamw"}
    reference = trained(lambda w: torch.optim.Muon(w, **kwargs))
    same = trained(lambda w: Muon(w, ns_dtype=torch.bfloat16, **kwargs))
    fp32 = trained(lambda w: Muon(w, ns_dtype=torch.float32, **kwargs))
    for r, s, f in zip(reference, same, fp32, strict=True):
        assert torch.equal(r, s)
        moved = (r - start[0 if r.shape == start[0].shape else 1]).norm()
        assert (f - r).norm() < 0.02 * moved  # bf16's rounding, not another update
    for g in grads[0]:
        singular = torch.linalg.svdvals(
            newton_schulz(g, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.float32)
        )
        assert singular.min() > 0.6 and singular.max() < 1.25, singular


def test_setup_orthogonalizes_in_fp32_only_where_bf16_is_not_native(tmp_path, monkeypatch):
    """The pretraining run's Muon takes bf16 Newton-Schulz where oneDNN has native bf16 and
    fp32 where it has not (torch's bf16 path there is ~40x slower than fp32)."""
    import torch

    from cadenza.models.generator import GeneratorConfig
    from cadenza.training import pretrain

    model_config = GeneratorConfig(
        vocab_size=17, d_model=32, n_layers=1, n_heads=2, d_ff=64, seg_len=16, mem_len=16
    )
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(pretrain, "native_cpu_bf16", lambda native=native: native)
        run = pretrain.setup(
            model_config, pretrain.TrainConfig(device="cpu"), tmp_path / str(native)
        )
        assert run.optimizer.optimizers[0].ns_dtype == dtype
