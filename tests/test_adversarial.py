"""Discriminator and adversarial fine-tuning: span masking, the straight-through estimator,
chunked generation memory, GAN losses, stages with MLflow diagnostics, guard rails, resume."""

from __future__ import annotations

import dataclasses
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
from cadenza.stages.summaries import adversarial_summary
from cadenza.training.gan_losses import discriminator_loss, generator_loss
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
    "select_window_len": 16, "select_bins": 2, "select_folds": 2, "prime_tokens": 0,
    "adv_every": 1,
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


def test_gan_losses_prefer_a_discriminator_that_separates():
    real, fake = torch.tensor([2.0, 3.0]), torch.tensor([-2.0, -3.0])
    assert discriminator_loss(real, fake) < discriminator_loss(fake, real)
    assert generator_loss(real, fake) > generator_loss(real, real + 1)


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


def test_rollback_guard(pretrained, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(pretrained, root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    # A wild generator learning rate with zero tolerance: validation NLL degrades -> rollback.
    params["adversarial"].update(lr_generator=0.05, tolerance=0.0, adv_weight=5.0)
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


def test_adversarial_settings_that_cannot_work_are_refused():
    with pytest.raises(Exception, match="adversarial.adv_weight = 0 is not allowed: the GAN arm"):
        parse_settings({"adversarial": {"adv_weight": 0}})
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


def test_critic_steps_zero_keeps_the_warmed_up_critic_fixed(pretrained, tmp_path):
    """critic_steps 0 (and no warm-up): the critic saved at the end is the pretrained
    discriminator, never updated, while the generator trained against it."""
    root = tmp_path / "p"
    shutil.copytree(pretrained, root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["adversarial"].update(critic_steps=0, critic_warmup_steps=0)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    adversarial_stage.run(_settings(root).adversarial, Paths(root=root, corpus="mine"), track=False)
    saved = load_file(root / "models" / "generator-gan" / "last" / "discriminator.safetensors")
    pretrained_critic = load_file(root / "models" / "discriminator" / "model.safetensors")
    assert saved.keys() == pretrained_critic.keys()
    assert all(torch.equal(saved[k], pretrained_critic[k]) for k in saved)
    start = load_file(root / "models" / "generator-mle" / "model.safetensors")
    moved = load_file(root / "models" / "generator-gan" / "last" / "model.safetensors")
    assert any(not torch.equal(start[k], moved[k]) for k in start)


def test_reinforce_learns_from_a_reward_it_cannot_differentiate():
    """A reward that counts one token in finished samples (no gradient through it): the
    score-function estimator raises that token's share; the KL penalty holds it back."""
    from cadenza.training import adversarial as training
    from cadenza.training.config import AdversarialConfig

    target = 7

    def counted(ids: np.ndarray):
        return (ids == target).mean(1), {}

    shares = {}
    for kl_weight in (0.0, 2.0):
        generator, _ = tiny_pair()
        reference, _ = tiny_pair()
        reference.eval().requires_grad_(False)
        config = AdversarialConfig(
            sample_batch=16, sample_len=16, chunk_len=16, prime_tokens=0, estimator="reinforce",
            adv_weight=1.0, kl_weight=kl_weight, reward_buffer=4, critic_warmup_steps=0,
        )  # fmt: skip
        tokens = np.random.default_rng(0).integers(4, VOCAB, 4000)
        real = training.RealChunks(tokens, np.array([0, 2000, 4000]), 16, 0)
        rng = torch.Generator().manual_seed(0)
        sampler = training.Sampler(generator, real, config, torch.device("cpu"), rng, bos=1)
        optimizer = torch.optim.Adam(generator.parameters(), lr=3e-3)
        score = training.external_reward(counted)
        for _ in range(40):
            optimizer.zero_grad()
            metrics = training.policy_gradient_backward(
                generator, reference, sampler, score, config
            )
            optimizer.step()
        _, ids, _ = sampler.episodes(64)
        shares[kl_weight] = (ids == target).float().mean().item()
        assert np.isfinite(metrics["pg_loss"]) and metrics["kl_to_start"] >= -1e-3
    assert shares[0.0] > 0.3, shares  # from about 1 / 40 at the start
    assert shares[2.0] < shares[0.0], shares


def _trained_on_reward(config, reward, steps: int, backward, target: int):
    """(generator, share of `target` in 64 fresh samples, the last update's metrics) after
    `steps` updates of backward(generator, reference, sampler, score, config) in Adam, from a
    tiny generator, with a reward that needs no gradient."""
    from cadenza.training import adversarial as training

    generator, _ = tiny_pair()
    reference, _ = tiny_pair()
    reference.eval().requires_grad_(False)
    tokens = np.random.default_rng(0).integers(4, VOCAB, 4000)
    real = training.RealChunks(tokens, np.array([0, 2000, 4000]), 16, 0)
    rng = torch.Generator().manual_seed(0)
    sampler = training.Sampler(generator, real, config, torch.device("cpu"), rng, bos=1)
    optimizer = torch.optim.Adam(generator.parameters(), lr=3e-3)
    score, metrics = training.external_reward(reward), {}
    for _ in range(steps):
        optimizer.zero_grad()
        metrics = backward(generator, reference, sampler, score, config)
        optimizer.step()
    _, ids, _ = sampler.episodes(64)
    return generator, (ids == target).float().mean().item(), metrics


def test_preference_learns_from_a_ranking_and_not_from_ties():
    """DPO on pairs ranked by a reward that counts one token (no gradient through it) raises
    that token's share; a reward that ties every pair leaves the weights as they were."""
    from cadenza.training import adversarial as training
    from cadenza.training.config import AdversarialConfig

    target = 7
    config = AdversarialConfig(
        sample_batch=16, sample_len=16, chunk_len=16, prime_tokens=0, estimator="preference",
        adv_weight=1.0, preference_beta=0.5, reward_buffer=4, critic_warmup_steps=0,
    )  # fmt: skip

    def trained(reward, steps, rounds=None):
        backward = training.preference_backward if rounds is None else rounds.backward
        return _trained_on_reward(config, reward, steps, backward, target)

    _, share, metrics = trained(lambda ids: ((ids == target).mean(1), {}), 40)
    assert share > 0.3, share  # from about 1 / 40 at the start
    assert metrics["preference_pairs"] > 0 and metrics["reward_gap"] > 0
    assert np.isfinite(metrics["preference_loss"]) and metrics["kl_to_start"] > 0
    # offline rounds: 64 samples ranked at once, 32 pairs taken 8 per update (4 per round)
    config = dataclasses.replace(config, preference_pool=64)
    _, share, metrics = trained(
        lambda ids: ((ids == target).mean(1), {}), 40, training.PreferenceRounds()
    )
    assert share > 0.3, share
    # tied pairs are dropped, so a round holds at most 4 updates: 10 to 39 rounds in 40
    assert 10 <= metrics["preference_round"] < 40 and 0 < metrics["preference_pairs"] <= 8
    generator, _, metrics = trained(lambda ids: (np.zeros(len(ids)), {}), 3)
    start, _ = tiny_pair()
    assert metrics["preference_pairs"] == 0
    pairs = zip(generator.parameters(), start.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_rejection_fits_the_best_samples_and_learns_nothing_from_ties():
    """Rejection-sampling fine-tuning: the best quarter of each round by a reward that counts
    one token (no gradient through it) is fitted by likelihood, and that token's share rises;
    the worst quarter fitted instead lowers it; a reward that ties every sample leaves the
    weights as they were."""
    from cadenza.training import adversarial as training
    from cadenza.training.config import AdversarialConfig

    target = 7
    config = AdversarialConfig(
        sample_batch=16, sample_len=16, chunk_len=16, prime_tokens=0, estimator="rejection",
        adv_weight=1.0, preference_pool=64, keep_fraction=0.25, critic_warmup_steps=0,
    )  # fmt: skip

    def trained(reward, steps):
        backward = training.RejectionRounds().backward
        return _trained_on_reward(config, reward, steps, backward, target)

    counted = lambda ids: ((ids == target).mean(1), {})  # noqa: E731
    _, before, _ = trained(counted, 0)
    _, share, metrics = trained(counted, 40)
    assert share > 0.3 and before < 0.06, (before, share)
    # 64 samples a round, at most 16 kept, 16 per update: one update per round
    assert metrics["preference_round"] == 40 and 0 < metrics["kept"] <= 16
    assert metrics["reward_kept"] > metrics["reward_mean"] and metrics["kl_to_start"] > 0
    _, share, _ = trained(lambda ids: (-(ids == target).mean(1), {}), 40)
    assert share < before, (before, share)
    generator, _, metrics = trained(lambda ids: (np.zeros(len(ids)), {}), 3)
    start, _ = tiny_pair()
    assert metrics["kept"] == 0
    pairs = zip(generator.parameters(), start.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_kept_rows_are_the_best_above_the_median():
    from cadenza.training.adversarial import kept_rows

    rewards = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.7, 0.2, 0.5, 0.5])
    assert kept_rows(rewards, 0.25).tolist() == [1, 4]
    assert kept_rows(rewards, 0.5).tolist() == [1, 4]  # the 0.5s tie with the median
    assert kept_rows(torch.ones(8), 0.5).tolist() == []


@pytest.mark.parametrize(
    ("estimator", "reward"),
    [("reinforce", "music"), ("reinforce", "critic"), ("reinforce", "voice_leading"),
     ("preference", "music"), ("rejection", "music")],
)  # fmt: skip
def test_sample_scoring_arm_trains_against_its_reward_and_logs_it(
    pretrained, tmp_path, tracking_uri, estimator, reward
):
    import mlflow

    root = tmp_path / "p"
    shutil.copytree(pretrained, root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["adversarial"].update(estimator=estimator, reward=reward, reward_buffer=4)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    adversarial_stage.run(_settings(root).adversarial, Paths(root=root, corpus="mine"))
    metrics = json.loads((root / "metrics" / "adversarial.json").read_text())
    assert metrics["steps"] == 6
    client = mlflow.MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cadenza").experiment_id])
    loss = {"reinforce": "pg_loss", "preference": "preference_loss"}.get(estimator, "rejection_nll")
    for name in (loss, "reward_mean", "kl_to_start", "sample_log_prob", "adv_grad_norm"):
        history = client.get_metric_history(run.info.run_id, name)
        assert len(history) == 6 and all(np.isfinite(m.value) for m in history), name
    gan = root / "models" / "generator-gan"
    if reward == "voice_leading":
        broken = client.get_metric_history(run.info.run_id, "voice_leading_broken")
        assert len(broken) == 6 and all(m.value >= 0 for m in broken)
    if reward == "music":  # the classifier refitted every update, its accuracy logged
        accuracy = client.get_metric_history(run.info.run_id, "music_critic_accuracy")
        assert len(accuracy) == 6 and all(0 <= m.value <= 1 for m in accuracy)
        assert metrics["discriminator_accuracy"] is None  # no SpanBERT critic in this arm
        (line,) = adversarial_summary(metrics)  # what `cadenza adversarial` prints
        assert "no SpanBERT critic" in line[1]
        assert not (gan / "last" / "discriminator.safetensors").exists()
    if reward == "critic":  # the SpanBERT critic scores and keeps learning
        assert client.get_metric_history(run.info.run_id, "d_accuracy")
        assert 0 <= metrics["discriminator_accuracy"] <= 1
    start = load_file(root / "models" / "generator-mle" / "model.safetensors")
    moved = load_file(gan / "last" / "model.safetensors")
    assert any(not torch.equal(start[k], moved[k]) for k in start)


def test_reinforce_settings_that_cannot_work_are_refused():
    with pytest.raises(Exception, match="leave-one-out baseline needs at least 2"):
        parse_settings({"adversarial": {"estimator": "reinforce", "sample_batch": 1}})
    with pytest.raises(Exception, match="pairs samples and needs at least 2"):
        parse_settings({"adversarial": {"estimator": "preference", "sample_batch": 1}})
    with pytest.raises(Exception, match="preference_pool 4: a round must hold"):
        parse_settings({"adversarial": {"estimator": "preference", "preference_pool": 4}})
    with pytest.raises(Exception, match="keeps samples above the batch's median"):
        parse_settings({"adversarial": {"estimator": "rejection", "sample_batch": 1}})
    with pytest.raises(Exception, match="keep_fraction"):
        parse_settings({"adversarial": {"estimator": "rejection", "keep_fraction": 0.75}})
    with pytest.raises(Exception, match="preference_beta"):
        parse_settings({"adversarial": {"estimator": "preference", "preference_beta": 0}})
    with pytest.raises(Exception, match="estimator"):
        parse_settings({"adversarial": {"estimator": "ppo"}})
