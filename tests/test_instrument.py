"""The evaluation instrument on real tokens and a real (tiny) generator: matched windows,
common random numbers, window statistics, and the instrument's own power and calibration."""

from __future__ import annotations

import numpy as np
import pytest
from joblib import Parallel
from symusic import Note, Score, Tempo, TimeSignature, Track

from cadenza.config import EvaluateSettings
from cadenza.evaluation import probes, window_stats, windows
from cadenza.evaluation.instrument import (
    Instrument,
    across_seeds,
    compare,
    evidence_for,
    window_set,
)
from cadenza.sampling import Sampling


def test_plan_and_real_windows_match_offsets_and_stay_inside_documents():
    plan = windows.make_plan(num_samples=50, sample_len=100, window_len=20, num_bins=4, seed=3)
    assert plan.offsets.shape == (50, 4)
    for k in range(4):
        assert np.all(plan.offsets[:, k] >= plan.bin_edges[k])
        assert np.all(plan.offsets[:, k] < plan.bin_edges[k + 1])
    assert plan.offsets.max() + 20 <= 100
    same = windows.make_plan(50, 100, 20, 4, seed=3)
    np.testing.assert_array_equal(same.offsets, plan.offsets)
    # Documents whose tokens encode (document, position); EOS = 1 ends each one.
    docs = [np.r_[1000 * (d + 1) + np.arange(length), 1] for d, length in
            enumerate([60, 95, 100, 130, 150])]  # fmt: skip
    real = windows.real_windows(docs, plan, eos=1, seed=0)
    for i in range(50):
        for k in range(4):
            window, doc = real.tokens[i, k], real.documents[i, k]
            offset = plan.offsets[i, k]
            assert window[0] == 1000 * (doc + 1) + offset  # the same offset from the start
            assert np.all(np.diff(window) == 1)  # one document, no EOS, no boundary crossed
    assert real.eligible[-1] < real.eligible[0]  # fewer documents reach the last bin
    with pytest.raises(ValueError, match="no real document holds a window"):
        windows.real_windows([np.arange(30)], plan, eos=1, seed=0)
    with pytest.raises(ValueError, match="window_len 200 exceeds"):
        windows.make_plan(4, 100, 200, 1, 0)
    samples = np.arange(50 * 100).reshape(50, 100)
    cut = windows.cut(samples, plan)
    assert cut.shape == (50, 4, 20)
    assert cut[7, 2, 0] == samples[7, plan.offsets[7, 2]]


def _score(chords: list[list[int]], beats: float = 1.0) -> Score:
    score = Score(480)
    score.tempos.append(Tempo(0, 120.0))
    score.time_signatures.append(TimeSignature(0, 4, 4))
    track = Track("choir", 0, False)
    for i, chord in enumerate(chords):
        for pitch in chord:
            track.notes.append(Note(int(i * 480 * beats), int(480 * beats), pitch, 80))
    score.tracks.append(track)
    return score


def test_window_statistics_hear_key_voices_and_clusters():
    names = window_stats.FEATURE_NAMES
    triads = window_stats.window_features(_score([[48, 64, 67, 72], [53, 65, 69, 72]] * 4))
    value = dict(zip(names, triads, strict=True))
    assert value["scale_consistency"] == pytest.approx(1.0)  # C major holds every note
    assert value["voices_mean"] == pytest.approx(4.0) and value["voices_4"] == 1.0
    assert value["seconds_clusters"] == 0.0 and value["unison_doublings"] == 0.0
    assert value["notes_per_beat"] == pytest.approx(4.0)
    assert value["top_interval_0"] == 1.0  # the soprano holds C
    assert value["bass_interval_5"] == 1.0  # C-F-C-F: fourths
    clusters = window_stats.window_features(_score([[60, 61, 62, 62], [66, 67, 68, 68]] * 4))
    value = dict(zip(names, clusters, strict=True))
    assert value["seconds_clusters"] > 0.5 and value["unison_doublings"] > 0.1
    assert value["scale_consistency"] < 1.0
    assert not window_stats.window_features(Score(480)).any()  # no notes: zeros


def _tiny_generator(tokens: np.ndarray, vocab_size: int, steps: int):
    """A tiny generator fitted for a few hundred steps on the real stream (so its samples
    look like the data), the way the pretrain stage fits one, without its bookkeeping."""
    import torch

    from cadenza.models.generator import GeneratorConfig, TransformerXL

    torch.manual_seed(0)
    net = TransformerXL(
        GeneratorConfig(vocab_size=vocab_size, d_model=48, n_layers=2, n_heads=2, d_ff=96,
                        seg_len=48, mem_len=48, dropout=0.0)
    )  # fmt: skip
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    stream = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    rng = np.random.default_rng(0)
    for _ in range(steps):
        starts = rng.integers(0, len(stream) - 49, 16)
        batch = torch.stack([stream[s : s + 49] for s in starts])
        logits, _ = net(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


@pytest.fixture(scope="module")
def setup(token_project):
    """Real documents, a fitted tiny generator, a (random, frozen) encoder, the context, and
    three sample sets: the model, the model under other seeds, the model at temperature 2."""
    import torch

    from cadenza.evaluation.context import Context
    from cadenza.models.discriminator import Discriminator, DiscriminatorConfig
    from cadenza.tokens.store import load_split
    from cadenza.tokens.tokenizer import load_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast and immune to a busy box
    tokenizer = load_tokenizer(token_project / "data" / "tokens" / "tokenizer.json")
    tokens, offsets = load_split(token_project / "data" / "tokens", "train")
    net = _tiny_generator(tokens, len(tokenizer.vocab), steps=250)
    torch.manual_seed(1)
    config = DiscriminatorConfig(
        vocab_size=len(tokenizer.vocab), d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=32
    )
    encoder = Discriminator(config)
    settings = EvaluateSettings(num_samples=64, sample_len=96, window_len=32, num_bins=2)
    plan = windows.make_plan(64, 96, 32, 2, seed=0)
    docs = windows.documents(tokens, offsets, tokenizer["BOS_None"])
    real = windows.real_windows(docs, plan, tokenizer["EOS_None"], seed=0)
    context = Context(settings, plan, real, None, encoder, tokenizer, torch.device("cpu"), [])
    features, music = _features(context, real.tokens)
    context.real_set = window_set(plan, features, real.documents, music)
    sets = {
        "model": _set(context, net, 1.0, seed=1),
        "reseeded": _set(context, net, 1.0, seed=2),
        "hot": _set(context, net, 2.0, seed=1),
    }
    yield context, net, sets
    torch.set_num_threads(threads)


def _features(context, tokens):
    """The learned and music probes (the combined one adds time, not power, here)."""
    from cadenza.evaluation.context import features_of

    features, music = features_of(context, tokens)
    return {"learned": features["learned"], "music": features["music"]}, music


def _set(context, net, temperature: float, seed: int):
    samples = windows.generate_samples(
        net, context.tokenizer, context.plan, Sampling(temperature), seed, "cpu", batch_size=32
    )
    groups = np.repeat(np.arange(context.plan.num_samples), context.plan.num_bins)
    features, music = _features(context, windows.cut(samples, context.plan))
    return samples, window_set(context.plan, features, groups, music)


def test_common_random_numbers_and_no_special_tokens(setup):
    context, net, sets = setup
    again = windows.generate_samples(
        net, context.tokenizer, context.plan, Sampling(), 1, "cpu", batch_size=32
    )
    np.testing.assert_array_equal(again, sets["model"][0])  # same seed, same samples
    assert (sets["model"][0] != sets["reseeded"][0]).mean() > 0.3
    specials = [context.tokenizer[n] for n in windows.SPECIAL_TOKENS]
    assert sets["model"][0].shape == (64, 96) and not np.isin(sets["model"][0], specials).any()


def test_instrument_finds_a_degraded_model_and_not_a_reseeded_one(setup):
    """Power: sampling at temperature 2 is found worse (p < 0.05). Calibration: the same
    model with other sampling seeds is not found different. A fixed seed repeats exactly."""
    context, _, sample_sets = setup
    sets = {name: window_set for name, (_, window_set) in sample_sets.items()}
    instrument = Instrument(context.plan, context.real_set, folds=4, repeats=1, num_draws=50)
    results, scores = instrument.evaluate(sets)
    worse = compare(scores, "hot", "model")
    same = compare(scores, "reseeded", "model")
    print({name: round(r["discriminative_accuracy"], 3) for name, r in results.items()},
          worse, same)  # fmt: skip
    assert worse["difference"] > 0 and worse["ci_low"] > 0 and worse["p_value"] < 0.05, worse
    assert same["p_value"] >= 0.05 and same["ci_low"] <= 0 <= same["ci_high"], same
    assert set(worse["by_probe"]) == {"learned", "music"}  # every probe, paired too
    assert worse["by_probe"][worse["probe"]]["difference"] == worse["difference"]
    itself = compare(scores, "model", "model")
    assert itself["difference"] == 0 and itself["p_value"] == 1.0
    assert not evidence_for(itself, 1.0, 1.0, 0.05, 0.02)[0]  # never wins against itself
    again = Instrument(context.plan, context.real_set, folds=4, repeats=1, num_draws=50)
    probe = results["model"]["discriminative_probe"]
    repeat = again.score(sets["model"], probe)
    assert repeat.accuracy == results["model"]["discriminative_accuracy"]
    np.testing.assert_array_equal(repeat.replicates, scores["model"][probe].replicates)
    for result in results.values():  # the headline is the strongest probe
        best = max(p["accuracy"] for p in result["probes"].values())
        assert result["discriminative_accuracy"] == best
        assert len(result["position_bins"]) == 2
        for b in result["position_bins"]:
            assert b["ci_low"] <= b["accuracy"] <= b["ci_high"]
            assert set(b["music"]) >= {"scale_consistency", "voices_mean"}


def test_bootstrap_p_value_and_evidence_rules():
    assert probes.bootstrap_p_value(np.zeros(50)) == 1.0
    assert probes.bootstrap_p_value(-np.ones(99)) == pytest.approx(0.01)
    comparison = {"difference": -0.1, "ci_low": -0.2, "ci_high": -0.01, "p_value": 0.01,
                  "probe": "music"}  # fmt: skip
    assert evidence_for(comparison, 1.0, 1.0, 0.05, 0.02)[0]
    ok, why = evidence_for(comparison, 1.05, 1.0, 0.05, 0.02)
    assert not ok and "test NLL" in why
    ok, why = evidence_for({**comparison, "p_value": 0.2}, 1.0, 1.0, 0.05, 0.02)
    assert not ok and "not lower at alpha 0.05" in why


def test_bad_evaluate_settings_name_the_key():
    from cadenza.config import ParamsError, parse_settings

    with pytest.raises(ParamsError, match="window_len 300 must not exceed sample_len 200"):
        parse_settings({"evaluate": {"window_len": 300, "sample_len": 200}})
    with pytest.raises(ParamsError, match="evaluate.chunk_len"):  # the removed key, named
        parse_settings({"evaluate": {"chunk_len": 64}})
    with pytest.raises(ValueError, match="only 5 window starts fit"):
        windows.make_plan(4, 20, 16, num_bins=8, seed=0)


def test_cached_fold_splits_are_sklearns():
    from sklearn.model_selection import StratifiedGroupKFold

    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(40), 4)
    y = (groups < 20).astype(float)
    for seed in (0, 1):
        expected = StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(
            np.zeros((len(y), 1)), y, groups
        )
        cached = probes.fold_splits(y, groups, 5, seed)
        for (train, test), (want_train, want_test) in zip(cached, expected, strict=True):
            assert np.array_equal(train, want_train) and np.array_equal(test, want_test)
        assert probes.fold_splits(y.copy(), groups.copy(), 5, seed) is cached  # the same key
    other = rng.permutation(groups)  # other groups: another split, not the cached one
    assert probes.fold_splits(y, other, 5, 0) is not probes.fold_splits(y, groups, 5, 0)


def test_replicates_in_two_processes_equal_those_in_one(monkeypatch):
    """The small probes (per-bin, tasks) run their replicates in worker processes above
    PARALLEL_MIN_ROWS; each replicate is its own draw and fold seed, so the split between
    processes must not change a digit."""
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(12), 3)  # 36 windows a side, 12 documents / samples
    real, fake = rng.normal(size=(36, 6)), rng.normal(0.4, 1.0, size=(36, 6))
    data = probes.ProbeInput(real, fake, groups, groups)
    draws = probes.make_draws(groups, groups, 60, 0)  # 2,160 rows: above the threshold
    assert len(draws) * len(real) >= probes.PARALLEL_MIN_ROWS
    spread = []
    monkeypatch.setattr(probes, "Parallel", lambda **kw: spread.append(kw) or Parallel(**kw))
    two = probes.score(data, draws, folds=3, repeats=1, seed=0, jobs=2)
    one = probes.score(data, draws, folds=3, repeats=1, seed=0, jobs=1)
    assert spread == [{"n_jobs": 2}]  # the two-process path ran, once
    np.testing.assert_array_equal(two.replicates, one.replicates)
    np.testing.assert_array_equal(two.auc_replicates, one.auc_replicates)
    assert two.accuracy == one.accuracy


def test_paired_nll_ratio_finds_a_shift_and_none_without_one():
    """compare's test-nats ratio on 400 simulated test sets of 40 documents: a 3% shift
    with per-document noise is found (p < 0.05) every time and its 95% bootstrap interval
    holds 1.03 about 95% of the time (93% measured); two noisy copies of the same documents
    are found different about 5% of the time (the paired permutation test: 5.3%)."""
    import numpy as np

    from cadenza.evaluation.tuning import paired_nll

    rng = np.random.default_rng(0)
    found, covered, false_alarms = 0, 0, 0
    for i in range(400):  # each set its own bootstrap draws
        nats = rng.uniform(200, 2000, 40)
        shifted = paired_nll(nats * 1.03 * rng.normal(1, 0.03, 40), nats, seed=i, draws=1000)
        found += shifted["p_value"] < 0.05
        covered += shifted["ci_low"] < 1.03 < shifted["ci_high"]
        same = paired_nll(nats * rng.normal(1, 0.03, 40), nats * rng.normal(1, 0.03, 40), i, 1000)
        false_alarms += same["p_value"] < 0.05
    assert (found, covered > 350, false_alarms <= 30) == (400, True, True), (covered, false_alarms)
    one = paired_nll(np.array([120.0]), np.array([100.0]))  # one document: no evidence either way
    assert one["ratio"] == one["ci_low"] == one["ci_high"] == 1.2 and one["p_value"] == 1.0


def test_across_seeds_finds_a_shift_and_none_without_one():
    """The across-seed read on 1,000 simulated recipes of 4 seeds, each seed's arm-minus-control
    difference drawn with a seed spread of 0.04 (what DPO rounds showed): a true shift of
    -0.12 is found at p < 0.05 most of the time, the interval covers the truth ~95% of the
    time, and with no shift it alarms ~5% of the time."""
    rng = np.random.default_rng(11)
    found = covered = alarms = 0
    runs = 1000
    for _ in range(runs):
        shifted = across_seeds(rng.normal(-0.12, 0.04, 4))
        found += shifted["p_value"] < 0.05 and shifted["mean"] < 0
        covered += shifted["ci_low"] <= -0.12 <= shifted["ci_high"]
        alarms += across_seeds(rng.normal(0.0, 0.04, 4))["p_value"] < 0.05
    assert found / runs > 0.8, found
    assert 0.92 < covered / runs < 0.98, covered
    assert alarms / runs < 0.08, alarms
    same = across_seeds([0.01, 0.01])
    assert same["sd"] == 0 and same["p_value"] == 0.0 and same["ci_low"] == same["ci_high"]
    with pytest.raises(ValueError, match="at least 2"):
        across_seeds([0.1])
