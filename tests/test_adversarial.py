"""Discriminator and adversarial fine-tuning: span masking, the straight-through estimator,
chunked generation memory, GAN losses, stages with MLflow diagnostics, guard rails, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from cadenza.config import parse_settings
from cadenza.models.discriminator import Discriminator, DiscriminatorConfig
from cadenza.models.generator import GeneratorConfig, TransformerXL
from cadenza.models.gumbel import sample_chunks, straight_through_sample
from cadenza.paths import Paths
from cadenza.stages import adversarial as adversarial_stage
from cadenza.stages import pretrain as pretrain_stage
from cadenza.stages import pretrain_discriminator as discriminator_stage
from cadenza.training.gan_losses import LOSSES, discriminator_loss, generator_loss, gradient_penalty
from cadenza.training.memory import SavedTensorMeter
from cadenza.training.span_masking import span_mask

VOCAB = 40
TINY_DISCRIMINATOR = {
    "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "seq_len": 32, "batch_size": 4,
    "max_steps": 20, "warmup_steps": 2, "eval_interval": 10, "dropout": 0.0,
}  # fmt: skip
TINY_ADVERSARIAL = {
    "max_steps": 6, "batch_size": 2, "sample_batch": 2, "sample_len": 32, "chunk_len": 16,
    "eval_interval": 2, "checkpoint_interval": 2, "adv_weight": 0.5, "critic_warmup_steps": 4,
    "critic_eval_interval": 2, "critic_heldout": 8, "select_samples": 4, "select_sample_len": 32,
    "select_window_len": 16, "select_bins": 2, "select_folds": 2,
}  # fmt: skip


def tiny_pair() -> tuple[TransformerXL, Discriminator]:
    torch.manual_seed(0)
    generator = TransformerXL(
        GeneratorConfig(
            VOCAB, d_model=32, n_layers=2, n_heads=2, d_ff=64, seg_len=16, mem_len=16, dropout=0.0
        )
    )
    discriminator = Discriminator(
        DiscriminatorConfig(
            VOCAB, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=64, dropout=0.0
        )
    )
    return generator, discriminator


def test_span_masking_follows_spanbert():
    rng = np.random.default_rng(0)
    tokens = torch.randint(4, VOCAB, (64, 200))
    tokens[:, 0] = 1  # BOS is never masked
    mask = span_mask(tokens, rng, mask_id=3, vocab_size=VOCAB, special_ids={0, 1, 2})
    masked = mask.targets != -100
    assert masked.sum(1).eq(30).all()  # 15% of 200, exactly
    assert not masked[:, 0].any()
    assert torch.equal(mask.targets[masked], tokens[masked])
    replaced = mask.inputs[masked]
    share_mask = (replaced == 3).float().mean().item()
    share_kept = (replaced == tokens[masked]).float().mean().item()
    assert 0.7 < share_mask < 0.9 and 0.05 < share_kept < 0.2
    # Spans: contiguous runs with offsets 0..len-1, at most 10 long, boundaries outside.
    offsets = mask.span_offset[masked]
    assert offsets.max() < 10 and (offsets == 0).sum() < masked.sum()
    lengths = np.diff(
        np.flatnonzero(np.r_[True, (mask.span_offset[masked].numpy() == 0)[1:], True])
    )
    assert 2.5 < lengths.mean() < 4.5  # geometric(0.2) clipped at 10 has mean 3.8 (budget trims)
    b, t = masked.nonzero()[0].tolist()
    assert mask.span_left[b, t] < t - mask.span_offset[b, t] + 1 and mask.span_right[b, t] > t


def test_straight_through_forward_is_one_hot_and_gradient_reaches_the_generator():
    generator, discriminator = tiny_pair()
    logits = torch.randn(3, VOCAB, requires_grad=True)
    one_hot, index = straight_through_sample(
        logits, tau=0.5, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(one_hot.detach(), torch.nn.functional.one_hot(index, VOCAB).float())
    one_hot.sum().backward()  # the soft path carries gradient
    assert logits.grad is not None

    prompt = torch.ones(2, 1, dtype=torch.long)
    (chunk, ids), *_ = list(
        sample_chunks(generator, prompt, 1, 8, tau=1.0, generator=torch.Generator().manual_seed(0))
    )
    assert torch.equal(chunk.argmax(-1), ids) and torch.equal(chunk.sum(-1), torch.ones(2, 8))
    discriminator.score(chunk).sum().backward()
    grads = [p.grad for p in generator.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    # The discriminator accepts ids too and gives the same score for the same sequence.
    torch.testing.assert_close(discriminator.score(ids), discriminator.score(chunk.detach()))


def _peak_saved_bytes(num_chunks: int, chunk_len: int) -> int:
    generator, discriminator = tiny_pair()
    prompt = torch.ones(2, 1, dtype=torch.long)
    with SavedTensorMeter() as meter:
        for chunk, _ in sample_chunks(
            generator, prompt, num_chunks, chunk_len, 1.0, torch.Generator().manual_seed(0)
        ):
            discriminator.score(chunk).mean().backward()  # one backward per chunk
    return meter.peak


def test_peak_memory_follows_chunk_size_not_sample_length():
    one_chunk = _peak_saved_bytes(1, 8)
    four_chunks = _peak_saved_bytes(4, 8)
    one_long_chunk = _peak_saved_bytes(1, 32)
    assert four_chunks < 1.2 * one_chunk
    assert one_long_chunk > 3 * one_chunk


@pytest.mark.parametrize("kind", LOSSES)
def test_gan_losses_prefer_a_discriminator_that_separates(kind):
    real, fake = torch.tensor([2.0, 3.0]), torch.tensor([-2.0, -3.0])
    assert discriminator_loss(kind, real, fake) < discriminator_loss(kind, fake, real)
    assert generator_loss(kind, real, fake) > generator_loss(kind, real, real + 1)


def test_gradient_penalty_is_zero_for_unit_slope():
    weight = torch.ones(4) / 2.0  # |grad| = 1 for inputs of shape (B, 2, 2)
    penalty = gradient_penalty(
        lambda x: (x.flatten(1) * weight).sum(1), torch.rand(3, 2, 2), torch.rand(3, 2, 2)
    )
    assert penalty.item() == pytest.approx(0.0, abs=1e-6)


def _gan_project(token_project: Path, dest: Path, **adversarial) -> Path:
    shutil.copytree(token_project, dest, ignore=shutil.ignore_patterns("models", "mlflow.db"))
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["pretrain_discriminator"] = TINY_DISCRIMINATOR
    params["adversarial"] = {**TINY_ADVERSARIAL, **adversarial}
    (dest / "params.yaml").write_text(yaml.safe_dump(params))
    return dest


def _settings(root: Path):
    return parse_settings(yaml.safe_load((root / "params.yaml").read_text()))


@pytest.fixture(scope="module")
def pretrained(token_project, tmp_path_factory) -> Path:
    """Tiny generator and discriminator, pretrained by their real stages (untracked)."""
    root = _gan_project(token_project, tmp_path_factory.mktemp("gan") / "p")
    settings, paths = _settings(root), Paths(root=root, corpus="mine")
    pretrain_stage.run(settings.pretrain, paths, track=False)
    discriminator_stage.run(settings.pretrain_discriminator, paths, track=False)
    return root


def test_discriminator_stage_logs_mlm_to_mlflow(pretrained, tmp_path, tracking_uri):
    import mlflow

    root = tmp_path / "p"
    shutil.copytree(pretrained, root)
    result = discriminator_stage.run(
        _settings(root).pretrain_discriminator, Paths(root=root, corpus="mine")
    )
    assert 0 < result.valid_mlm_accuracy <= 1 and np.isfinite(result.valid_mlm_loss)
    weights = load_file(root / "models" / "discriminator" / "model.safetensors")
    assert "span_boundary.position.weight" in weights
    client = mlflow.MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cadenza").experiment_id])
    assert run.data.tags["cadenza.stage"] == "pretrain_discriminator"
    for name in ("mlm_loss", "sbo_loss", "mlm_accuracy", "valid_mlm_accuracy"):
        assert client.get_metric_history(run.info.run_id, name), name


def test_adversarial_stage_tracks_gan_diagnostics(pretrained, tmp_path, tracking_uri):
    import mlflow

    root = tmp_path / "p"
    shutil.copytree(pretrained, root)
    (root / "params.yaml").write_text((root / "params.yaml").read_text())
    result = adversarial_stage.run(_settings(root).adversarial, Paths(root=root, corpus="mine"))
    out = root / "models" / "generator-gan"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "last" / "discriminator.safetensors").is_file()
    assert result.best_valid_nll <= result.initial_valid_nll
    assert 0.0 <= result.discriminator_accuracy <= 1.0
    metrics = json.loads((root / "metrics" / "adversarial.json").read_text())
    assert metrics["steps"] == 6
    client = mlflow.MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cadenza").experiment_id])
    for name in (
        "d_real_score",
        "d_fake_score",
        "temperature",
        "nll_grad_norm",
        "adv_grad_norm",
        "control_train_nll",
        "control_valid_nll",
        "warmup_heldout_accuracy",
        "gradient_penalty",
        "d_grad_norm",
        "valid_nll",
        "d_accuracy",
    ):
        assert client.get_metric_history(run.info.run_id, name), name
    heldout = client.get_metric_history(run.info.run_id, "d_heldout_accuracy")
    assert [m.step for m in heldout] == [0, 2, 4, 6]
    assert [step for step, _ in metrics["accuracy_history"]] == [0, 2, 4, 6]
    assert all(0 <= m.value <= 1 for m in heldout)
    # Both arms start from the same weights and see the same first batch: equal first NLL.
    first = {
        n: client.get_metric_history(run.info.run_id, n)[0]
        for n in ("train_nll", "control_train_nll")
    }
    assert first["train_nll"].step == first["control_train_nll"].step == 1
    assert first["train_nll"].value == pytest.approx(first["control_train_nll"].value, abs=1e-6)
    # Selection: a candidate per evaluation in each arm, the chosen one installed.
    for arm, data in (("gan", metrics), ("control", metrics["control"])):
        selection = data["selection"]
        assert [row["step"] for row in selection["table"]] == [0, 2, 4, 6], arm
        eligible = [row for row in selection["table"] if row["eligible"]]
        assert all(0 <= row["probe_accuracy"] <= 1 for row in eligible)
        assert selection["probe_accuracy"] == min(row["probe_accuracy"] for row in eligible)
        folder = root / "models" / f"generator-{arm}"
        assert (folder / "model.safetensors").read_bytes() == (
            folder / selection["file"]
        ).read_bytes()
    assert metrics["control"]["discriminator_accuracy"] is None  # no critic in the control
    assert metrics["warmup"]["heldout_windows"] == 8 and metrics["warmup"]["steps"] >= 1
    temperatures = [m.value for m in client.get_metric_history(run.info.run_id, "temperature")]
    assert temperatures[0] == pytest.approx(1.0) and temperatures[-1] == pytest.approx(0.01)


def test_wgan_gp_and_rollback_guard(pretrained, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(pretrained, root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    # A wild generator learning rate with zero tolerance: validation NLL degrades -> rollback.
    params["adversarial"].update(loss="wgan-gp", lr_generator=0.05, tolerance=0.0, adv_weight=5.0)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    result = adversarial_stage.run(
        _settings(root).adversarial, Paths(root=root, corpus="mine"), track=False
    )
    assert result.rollbacks >= 1
    config = json.loads((root / "models" / "generator-gan" / "config.json").read_text())
    assert config["valid_nll"] == pytest.approx(result.best_valid_nll)
    assert result.best_valid_nll <= result.initial_valid_nll


def test_interrupted_adversarial_run_resumes_to_the_same_weights(pretrained, tmp_path, monkeypatch):
    from cadenza.training import adversarial as adversarial_training

    straight, interrupted = tmp_path / "a", tmp_path / "b"
    shutil.copytree(pretrained, straight)
    shutil.copytree(pretrained, interrupted)
    adversarial_stage.run(
        _settings(straight).adversarial, Paths(root=straight, corpus="mine"), track=False
    )

    real_step = adversarial_training.adversarial_loss_backward
    calls = {"n": 0}

    def dies_at_step_four(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # after the checkpoint at step 2 and one more step
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(adversarial_training, "adversarial_loss_backward", dies_at_step_four)
    with pytest.raises(KeyboardInterrupt):
        adversarial_stage.run(
            _settings(interrupted).adversarial, Paths(root=interrupted, corpus="mine"), track=False
        )
    monkeypatch.setattr(adversarial_training, "adversarial_loss_backward", real_step)
    adversarial_stage.run(
        _settings(interrupted).adversarial, Paths(root=interrupted, corpus="mine"), track=False
    )
    metrics = [
        json.loads((r / "metrics" / "adversarial.json").read_text())
        for r in (straight, interrupted)
    ]
    for m in metrics:
        m.pop("seconds")
        m["control"].pop("seconds")
    assert metrics[0] == metrics[1]  # same NLLs, held-out accuracies, rollbacks
    for name in ("model.safetensors", "last/model.safetensors", "last/discriminator.safetensors"):
        a = load_file(straight / "models" / "generator-gan" / name)
        b = load_file(interrupted / "models" / "generator-gan" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_chunk_longer_than_the_discriminator_window_is_refused():
    with pytest.raises(Exception, match="exceeds pretrain_discriminator.seq_len"):
        parse_settings(
            {
                "pretrain_discriminator": {"seq_len": 16},
                "adversarial": {"chunk_len": 32, "sample_len": 64},
            }
        )


def test_frozen_discriminator_layers_do_not_move(pretrained, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(pretrained, root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["adversarial"].update(freeze_layers=1, critic_steps=2, max_steps=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    adversarial_stage.run(_settings(root).adversarial, Paths(root=root, corpus="mine"), track=False)
    before = load_file(root / "models" / "discriminator" / "model.safetensors")
    after = load_file(root / "models" / "generator-gan" / "last" / "discriminator.safetensors")
    frozen = [k for k in before if k.startswith(("encoder.layers.0.", "embedding.", "position."))]
    trained = [k for k in before if k.startswith("encoder.layers.1.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in trained)


def _critic_rounds(refreeze: bool) -> tuple[Discriminator, list]:
    """Two rounds of (generator's adversarial backward, critic update) with the bottom encoder
    layer frozen; with `refreeze` the frozen parameters are frozen again by hand after each
    generator pass (what a correct generator pass must leave behind)."""
    from cadenza.training import adversarial as adv

    generator, discriminator = tiny_pair()
    config = adv.AdversarialConfig(
        sample_batch=2, sample_len=16, chunk_len=8, freeze_layers=1, grad_clip=1e-3
    )  # a tiny clip: every update is clipped, so a foreign gradient in the norm shows
    critic = adv.Critic(discriminator, config)
    frozen = [p for p in discriminator.parameters() if not p.requires_grad]
    tokens = np.tile(np.arange(4, VOCAB), 20).astype(np.int64)
    offsets = np.array([0, len(tokens) // 2, len(tokens)])
    real = adv.RealChunks(tokens, offsets, config.sample_len, seed=0)
    rng, device = torch.Generator().manual_seed(0), torch.device("cpu")
    sampler = adv.Sampler(generator, real, config, device, rng, bos=1)
    for _ in range(2):
        adv.adversarial_loss_backward(critic, sampler, config, tau=1.0)
        if refreeze:
            for parameter in frozen:
                parameter.requires_grad_(False)
        adv.discriminator_step(critic, sampler, tau=1.0)
    return discriminator, frozen


def test_frozen_critic_layers_get_no_gradient_and_leave_the_clip_alone():
    discriminator, frozen = _critic_rounds(refreeze=False)
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)
    reference, _ = _critic_rounds(refreeze=True)
    for (name, a), b in zip(discriminator.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b), name  # trainable updates as if the frozen ones did not exist


def test_adversarial_settings_that_cannot_work_are_refused():
    with pytest.raises(Exception, match="adversarial: adv_optimizer separate with adv_weight 0"):
        parse_settings({"adversarial": {"adv_optimizer": "separate", "adv_weight": 0}})
    with pytest.raises(Exception, match="adversarial.adv_every = 0 is not allowed"):
        parse_settings({"adversarial": {"adv_every": 0}})


def test_encoder_with_distance_bias_reads_the_same_in_train_and_eval_mode():
    """PyTorch's inference fast path misreads per-head float masks; encode() avoids it."""
    torch.manual_seed(0)
    config = DiscriminatorConfig(VOCAB, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=32,
                                 dropout=0.0, local_bias=True)  # fmt: skip
    encoder, tokens = Discriminator(config), torch.randint(4, VOCAB, (3, 20))
    trained = encoder.train().encode(tokens)
    with torch.no_grad():
        evaluated = encoder.eval().encode(tokens)
    torch.testing.assert_close(trained, evaluated)
    near = encoder.eval().encode(tokens)[0, 10]
    tokens[0, 19] = (tokens[0, 19] + 1 - 4) % (VOCAB - 4) + 4  # a far token changes a little
    far_change = (encoder.encode(tokens)[0, 10] - near).abs().max()
    tokens[0, 11] = (tokens[0, 11] + 1 - 4) % (VOCAB - 4) + 4  # a neighbour changes more
    assert (encoder.encode(tokens)[0, 10] - near).abs().max() > far_change


# The interval critic: pitch tokens are ids 10..33 (pitch class = id % 12), the rest not.
PITCH_CLASSES = [i % 12 if 10 <= i < 34 else -1 for i in range(VOCAB)]


def _naive_interval_classes(ids: list[int], lag: int) -> np.ndarray:
    counts = np.zeros(12)
    for a, b in zip(ids[:-lag], ids[lag:], strict=True):
        if PITCH_CLASSES[a] >= 0 and PITCH_CLASSES[b] >= 0:
            counts[(PITCH_CLASSES[b] - PITCH_CLASSES[a]) % 12] += 1
    return counts / max(counts.sum(), 1.0)


def _chords(interval: int, rows: int, length: int, seed: int) -> torch.Tensor:
    """Token rows of 4-token 'notes' (filler, pitch, filler, filler) whose neighbouring
    pitches lie `interval` semitones apart, from random roots."""
    rng = np.random.default_rng(seed)
    out = np.zeros((rows, length), dtype=np.int64)
    for r in range(rows):
        pitch = int(rng.integers(10, 22))
        for t in range(0, length, 4):
            out[r, t : t + 4] = [1, pitch, 2, 3]
            pitch = pitch + interval if pitch + interval < 34 else pitch + interval - 12
    return torch.from_numpy(out)


def test_interval_critic_features_match_a_naive_count_and_the_one_hot_path():
    from cadenza.models.interval_critic import IntervalCritic

    critic = IntervalCritic(PITCH_CLASSES, lags=(4, 8))
    ids = torch.randint(0, VOCAB, (3, 32), generator=torch.Generator().manual_seed(0))
    features = critic.features(ids)
    for row in range(3):
        naive = np.r_[[_naive_interval_classes(ids[row].tolist(), lag) for lag in (4, 8)]]
        np.testing.assert_allclose(features[row].numpy(), naive.reshape(-1), atol=1e-6)
    one_hot = torch.nn.functional.one_hot(ids, VOCAB).float()
    torch.testing.assert_close(critic.features(one_hot), features)
    # Gradient from the critic's score reaches the generator through straight-through samples.
    generator, _ = tiny_pair()
    (chunk, _), *_ = list(
        sample_chunks(
            generator,
            torch.ones(2, 1, dtype=torch.long),
            1,
            16,
            1.0,
            torch.Generator().manual_seed(0),
        )  # fmt: skip
    )
    critic.score(chunk).sum().backward()
    assert sum(p.grad.abs().sum().item() for p in generator.parameters() if p.grad is not None) > 0


def test_interval_critic_learns_a_known_difference_and_finds_none_where_there_is_none():
    """Thirds (real) against seconds (fake) are told apart after a few updates; thirds
    against other thirds stay at chance."""
    from cadenza.models.interval_critic import IntervalCritic
    from cadenza.training import adversarial as adv

    config = adv.AdversarialConfig(critic="intervals", lr_intervals=1e-2)
    accuracies = {}
    for name, fake_interval in (("seconds", 2), ("thirds", 4)):
        torch.manual_seed(0)
        intervals = IntervalCritic(PITCH_CLASSES, lags=(4, 8))
        intervals.standardize(_chords(4, 64, 32, seed=0))
        critic = adv.Critic(None, config, intervals)
        for step in range(60):
            critic.update(
                _chords(4, 16, 32, seed=step + 1), _chords(fake_interval, 16, 32, 1000 + step)
            )
        accuracies[name] = critic.accuracy(
            _chords(4, 128, 32, 7), _chords(fake_interval, 128, 32, 8)
        )
    assert accuracies["seconds"] > 0.95
    assert abs(accuracies["thirds"] - 0.5) < 0.1


def _melodies(classes: list[int], rows: int, length: int, seed: int, shift: int = 0):
    """Token rows of 4-token notes whose pitches are drawn from the pitch classes `classes`
    (moved by `shift` semitones)."""
    rng = np.random.default_rng(seed)
    pitch_of = {c: i for i, c in enumerate(PITCH_CLASSES) if c >= 0}  # one pitch per class
    out = np.zeros((rows, length), dtype=np.int64)
    for r in range(rows):
        for t in range(0, length, 4):
            out[r, t : t + 4] = [1, pitch_of[(int(rng.choice(classes)) + shift) % 12], 2, 3]
    return torch.from_numpy(out)


def test_key_profile_is_the_same_in_every_key_and_tells_a_scale_from_all_twelve_classes():
    """key_profile: the sorted pitch-class profile and its DFT magnitudes match a numpy
    count, do not change when every pitch moves by a semitone, and give a finite gradient on a
    chunk with no pitches; a critic on them tells C major melodies (in any key) from chromatic
    ones after a few updates, and finds nothing between two sets of major-scale melodies."""
    from cadenza.models.interval_critic import IntervalCritic
    from cadenza.training import adversarial as adv

    major = [0, 2, 4, 5, 7, 9, 11]
    critic = IntervalCritic(PITCH_CLASSES, lags=(4,), key_profile=True)
    ids = _melodies(major, 3, 64, seed=0)
    features = critic.features(ids)
    assert features.shape == (3, 12 + 18)
    for row in range(3):
        classes = [PITCH_CLASSES[i] for i in ids[row].tolist() if PITCH_CLASSES[i] >= 0]
        h = np.bincount(classes, minlength=12) / len(classes)
        np.testing.assert_allclose(features[row, 12:24].numpy(), np.sort(h)[::-1], atol=1e-6)
        np.testing.assert_allclose(
            features[row, 24:].numpy(), np.abs(np.fft.rfft(h))[1:], atol=1e-3
        )
    for shift in (1, 5):
        moved = _melodies(major, 3, 64, seed=0, shift=shift)
        torch.testing.assert_close(critic.features(moved), features)
    silent = torch.zeros(1, 16, VOCAB, requires_grad=True)
    critic.score(silent).sum().backward()
    assert torch.isfinite(silent.grad).all()

    config = adv.AdversarialConfig(critic="intervals", lr_intervals=1e-2)
    accuracies = {}
    for name, fake_classes in (("chromatic", list(range(12))), ("major", major)):
        torch.manual_seed(0)
        intervals = IntervalCritic(PITCH_CLASSES, lags=(4,), key_profile=True)
        intervals.standardize(_melodies(major, 64, 64, seed=0, shift=3))
        judge = adv.Critic(None, config, intervals)
        for step in range(60):
            judge.update(
                _melodies(major, 16, 64, seed=step + 1, shift=step % 12),
                _melodies(fake_classes, 16, 64, seed=1000 + step, shift=step % 12),
            )
        accuracies[name] = judge.accuracy(
            _melodies(major, 128, 64, seed=7, shift=2), _melodies(fake_classes, 128, 64, 8, shift=9)
        )
    assert accuracies["chromatic"] > 0.9
    assert abs(accuracies["major"] - 0.5) < 0.1


def test_adversarial_stage_with_the_interval_critic(pretrained, tmp_path):
    """critic: both trains the SpanBERT head and the interval critic side by side; the
    interval critic's weights are saved for resume; bad lags are refused by name."""
    root = tmp_path / "p"
    shutil.copytree(pretrained, root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["adversarial"].update(critic="both", interval_lags=[1])
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    adversarial_stage.run(_settings(root).adversarial, Paths(root=root, corpus="mine"), track=False)
    last = root / "models" / "generator-gan" / "last"
    assert (last / "discriminator.safetensors").is_file() and (
        last / "intervals.safetensors"
    ).is_file()
    metrics = json.loads((root / "metrics" / "adversarial.json").read_text())
    assert all(0 <= accuracy <= 1 for _, accuracy in metrics["accuracy_history"])
    with pytest.raises(Exception, match="interval_lags"):
        parse_settings({"adversarial": {"interval_lags": [16], "chunk_len": 16, "sample_len": 32}})
    # 6 notes apart are 18 or 24 tokens: not inside a 16-token chunk, refused before training
    params["adversarial"].update(interval_lags=[6], chunk_len=16, sample_len=32)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match=r"interval_lags \[6\] notes apart are \[(18|24)\]"):
        adversarial_stage.run(
            _settings(root).adversarial, Paths(root=root, corpus="mine"), track=False
        )


def test_critic_steps_zero_keeps_the_warmed_up_critic_fixed(pretrained, tmp_path):
    """critic_steps 0 (and no warm-up): the interval critic saved at the end is the one built
    at the start, never updated, while the generator trained against it."""
    from cadenza.tokens.store import load_split
    from cadenza.tokens.tokenizer import load_tokenizer, pitch_classes
    from cadenza.training import adversarial as adv

    root = tmp_path / "p"
    shutil.copytree(pretrained, root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["adversarial"].update(critic="intervals", critic_steps=0, critic_warmup_steps=0)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    settings = _settings(root).adversarial
    paths = Paths(root=root, corpus="mine")
    adversarial_stage.run(settings, paths, track=False)
    saved = load_file(root / "models" / "generator-gan" / "last" / "intervals.safetensors")
    tokenizer = load_tokenizer(paths.tokens_dir / "tokenizer.json")
    config = adversarial_stage.adversarial_config(settings, tokenizer)
    per_note = 4 if tokenizer.config.use_velocities else 3  # Program, Pitch, [Velocity], Duration
    assert config.interval_lags == (per_note, 2 * per_note)  # notes [1, 2]
    classes = pitch_classes(tokenizer)
    fresh = adv._interval_critic(
        classes, load_split(paths.tokens_dir, "train"), config, torch.device("cpu")
    )
    assert saved.keys() == fresh.state_dict().keys()
    assert all(torch.equal(saved[k], fresh.state_dict()[k]) for k in saved)
    start = load_file(root / "models" / "generator-mle" / "model.safetensors")
    moved = load_file(root / "models" / "generator-gan" / "last" / "model.safetensors")
    assert any(not torch.equal(start[k], moved[k]) for k in start)


def _drifting(rows: int, length: int, chunk: int, seed: int, drift: bool):
    """Major-scale melodies of `length` tokens: in one key per row, or (drift) in a new
    random key every `chunk` tokens."""
    rng = np.random.default_rng(seed)
    major = [0, 2, 4, 5, 7, 9, 11]
    parts = []
    for r in range(rows):
        keys = (
            rng.integers(0, 12, length // chunk)
            if drift
            else [rng.integers(0, 12)] * (length // chunk)
        )
        parts.append(
            torch.cat(
                [_melodies(major, 1, chunk, seed * 1000 + r * 50 + k, int(key)) for k, key in
                 enumerate(keys)],
                1,
            )
        )  # fmt: skip
    return torch.cat(parts)


def test_a_whole_sample_critic_sees_key_drift_that_a_chunk_critic_cannot():
    """Real samples stay in one key; generated ones change key at every chunk boundary, each
    chunk a clean major scale. critic_window chunk scores 32-token chunks: nothing to tell
    (chance). critic_window sample scores the whole 128 tokens and finds the drift."""
    from cadenza.models.interval_critic import IntervalCritic
    from cadenza.training import adversarial as adv

    accuracies = {}
    for window in ("chunk", "sample"):
        config = adv.AdversarialConfig(
            critic="intervals", critic_window=window, sample_len=128, chunk_len=32,
            lr_intervals=1e-2,
        )  # fmt: skip
        w = config.window_len

        def rows(n, seed, drift, w=w):
            return _drifting(n, 128, 32, seed, drift).reshape(-1, w)

        torch.manual_seed(0)
        intervals = IntervalCritic(PITCH_CLASSES, lags=(4,), key_profile=True)
        intervals.standardize(rows(32, 0, False))
        judge = adv.Critic(None, config, intervals)
        for step in range(60):
            judge.update(rows(8, step + 1, False), rows(8, 500 + step, True))
        accuracies[window] = judge.accuracy(rows(64, 900, False), rows(64, 901, True))
    assert abs(accuracies["chunk"] - 0.5) < 0.1, accuracies
    assert accuracies["sample"] > 0.9, accuracies


def test_critic_window_sample_feeds_whole_samples_everywhere_the_critic_reads():
    """With critic_window sample the generator's adversarial pass hands the critic one
    (B, sample_len, V) window per sample (not one per chunk), gradient reaches the generator,
    and the critic's update, the warm-up and the held-out set read whole samples too."""
    from cadenza.models.interval_critic import IntervalCritic
    from cadenza.training import adversarial as adv

    shapes = {}
    for window in ("chunk", "sample"):
        generator, _ = tiny_pair()
        config = adv.AdversarialConfig(
            critic="intervals", critic_window=window, sample_batch=2, sample_len=32,
            chunk_len=8, critic_heldout=6, critic_warmup_steps=2, critic_eval_interval=1,
        )  # fmt: skip
        intervals = IntervalCritic(PITCH_CLASSES, lags=(4,), key_profile=True)
        seen = []
        score = intervals.score
        intervals.score = lambda x, score=score, seen=seen: (seen.append(tuple(x.shape)), score(x))[
            1
        ]
        critic = adv.Critic(None, config, intervals)
        tokens = np.tile(np.arange(4, VOCAB), 20).astype(np.int64)
        offsets = np.array([0, len(tokens) // 2, len(tokens)])
        real = adv.RealChunks(tokens, offsets, config.sample_len, seed=0)
        sampler = adv.Sampler(generator, real, config, torch.device("cpu"),
                              torch.Generator().manual_seed(0), bos=1)  # fmt: skip
        adv.adversarial_loss_backward(critic, sampler, config, tau=1.0)
        grads = [p.grad for p in generator.parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum().item() for g in grads) > 0
        shapes[window, "generator"] = sorted(set(seen))
        seen.clear()
        adv.discriminator_step(critic, sampler, tau=1.0)
        shapes[window, "update"] = sorted(set(seen))
        heldout = adv.HeldOut(adv.RealChunks(tokens, offsets, 32, seed=1), config)
        shapes[window, "heldout"] = tuple(heldout.real.shape)
        adv.warm_up_critic(critic, sampler, heldout, config, None)
    assert shapes["chunk", "generator"] == [(2, 8), (2, 8, VOCAB)]
    assert shapes["sample", "generator"] == [(2, 32), (2, 32, VOCAB)]
    assert shapes["chunk", "update"] == [(8, 8)]
    assert shapes["sample", "update"] == [(2, 32)]
    assert shapes["chunk", "heldout"] == (6, 8) and shapes["sample", "heldout"] == (6, 32)


def test_a_sample_window_longer_than_the_discriminator_is_refused():
    with pytest.raises(Exception, match="critic_window sample: the spanbert critic would read"):
        parse_settings(
            {
                "pretrain_discriminator": {"seq_len": 64},
                "adversarial": {"critic_window": "sample", "chunk_len": 32, "sample_len": 128},
            }
        )
    parse_settings(  # the interval critic reads any length
        {
            "pretrain_discriminator": {"seq_len": 64},
            "adversarial": {
                "critic_window": "sample", "critic": "intervals", "chunk_len": 32,
                "sample_len": 128,
            },
        }
    )  # fmt: skip


def test_absolute_profile_sees_samples_settled_in_one_key_that_key_profiles_cannot():
    """Real major-scale melodies in every key against generated ones all in one key: the
    key profile (the same in every key) is at chance; with absolute_profile the critic also
    reads the histogram as written (equal to a numpy count) and tells them apart."""
    from cadenza.models.interval_critic import IntervalCritic
    from cadenza.training import adversarial as adv

    major = [0, 2, 4, 5, 7, 9, 11]
    critic = IntervalCritic(PITCH_CLASSES, lags=(4,), key_profile=True, absolute_profile=True)
    ids = _melodies(major, 2, 64, seed=0, shift=3)
    features = critic.features(ids)
    assert features.shape == (2, 12 + 18 + 12)
    for row in range(2):
        classes = [PITCH_CLASSES[i] for i in ids[row].tolist() if PITCH_CLASSES[i] >= 0]
        h = np.bincount(classes, minlength=12) / len(classes)
        np.testing.assert_allclose(features[row, 30:].numpy(), h, atol=1e-6)

    def every_key(n, seed):
        return torch.cat([_melodies(major, 1, 64, seed * 100 + r, shift=r % 12) for r in range(n)])

    config = adv.AdversarialConfig(critic="intervals", lr_intervals=1e-2)
    accuracies = {}
    for absolute in (False, True):
        torch.manual_seed(0)
        intervals = IntervalCritic(
            PITCH_CLASSES, lags=(4,), key_profile=True, absolute_profile=absolute
        )
        intervals.standardize(every_key(48, 0))
        judge = adv.Critic(None, config, intervals)
        for step in range(60):
            judge.update(every_key(12, step + 1), _melodies(major, 12, 64, seed=500 + step))
        accuracies[absolute] = judge.accuracy(every_key(96, 900), _melodies(major, 96, 64, 901))
    assert abs(accuracies[False] - 0.5) < 0.1, accuracies
    assert accuracies[True] > 0.9, accuracies
