"""Evaluation pieces on real data: music statistics, the discriminative metric, the stage
run by DVC (metrics, report, gallery, lineage) in a real project."""

from __future__ import annotations

import json

import numpy as np
import pytest
from symusic import Score

from cadenza.evaluation import music_stats, voice_leading

from .conftest import make_midi


def test_features_of_a_known_line(tmp_path):
    # 32 quarter notes rising by semitones (pitch 60 + i % 12) at 120 bpm, 4/4.
    features = music_stats.piece_features(Score(str(make_midi(tmp_path / "line.mid"))))
    values = features.values
    assert features.num_notes == 32
    assert values["pitch_range"] == 11
    assert values["used_pitch_classes"] == 12
    assert values["polyphony"] == pytest.approx(1.0)
    assert values["note_density"] == pytest.approx(1.0)  # one note per beat
    assert values["mean_ioi"] == pytest.approx(1.0)
    assert values["empty_beat_rate"] == pytest.approx(0.0)
    assert values["groove_consistency"] == pytest.approx(1.0)  # every bar: 4 onsets on beats
    # Classes 0-7 three times, 8-11 twice: C major holds 0,2,4,5,7 (x3) + 9,11 (x2) = 19/32.
    assert values["scale_consistency"] == pytest.approx(19 / 32)
    assert values["pitch_class_histogram"].sum() == pytest.approx(1.0)
    assert values["pitch_class_transitions"].reshape(12, 12)[0, 1] == pytest.approx(3 / 31)


def test_chords_and_rests_change_polyphony_and_empty_beats(tmp_path):
    from symusic import Note

    score = Score(str(make_midi(tmp_path / "a.mid", num_notes=4)))
    track = score.tracks[0]
    for time in (0, 480):  # two more voices on the first two beats
        track.notes.append(Note(time, 480, 72, 80))
        track.notes.append(Note(time, 480, 76, 80))
    track.notes.append(Note(480 * 8, 480, 60, 80))  # beats 4-7 empty, then a note
    values = music_stats.piece_features(score).values
    assert values["polyphony"] == pytest.approx((3 + 3 + 1 + 1 + 1) / 5)
    assert values["empty_beat_rate"] == pytest.approx(4 / 9)


def test_set_comparison_is_zero_against_itself_and_grows_with_difference(chorale_dir):
    real = [music_stats.piece_features(Score(str(p))) for p in sorted(chorale_dir.glob("*.mid"))]
    same = music_stats.compare_sets(real, real)
    assert same["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    assert same["pitch_class_histogram_overlap"] > 0.5  # self-pairs (distance 0) differ
    shifted = []
    for path in sorted(chorale_dir.glob("*.mid")):
        score = Score(str(path)).shift_pitch(1).shift_time(0)
        for track in score.tracks:  # every note a sixteenth: a different texture
            for note in track.notes:
                note.duration = score.ticks_per_quarter // 4
        shifted.append(music_stats.piece_features(score))
    different = music_stats.compare_sets(real, shifted)
    assert different["frechet_distance"] > 1.0
    assert different["empty_beat_rate_overlap"] < same["empty_beat_rate_overlap"]
    with pytest.raises(ValueError, match="at least 2 pieces"):
        music_stats.compare_sets(real[:1], real)


def test_evaluate_stage_writes_every_number_and_the_report(registered_project):
    repo = registered_project["repo"]
    metrics = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert metrics["candidate"] in ("mle", "gan", "control")
    for name in ("mle", "gan", "control"):
        m = metrics[name]
        assert m["test_nll"] > 0
        assert 0 <= m["discriminative_accuracy_ci_low"] <= m["discriminative_accuracy"]
        assert m["discriminative_accuracy"] <= m["discriminative_accuracy_ci_high"] <= 1
        assert 0 <= m["discriminative_auc"] <= 1
        assert set(m["probes"]) == {"learned", "music", "combined"}
        assert m["discriminative_accuracy"] == max(p["accuracy"] for p in m["probes"].values())
        assert m["discriminative_probe"] in m["probes"]
        assert m["num_windows"] == 12 * 2 and m["window_len"] == 16 and m["sample_len"] == 48
        assert [(b["start"], b["end"]) for b in m["position_bins"]] == [(0, 31), (16, 48)]
        for b in m["position_bins"]:
            assert b["accuracy"] is None or b["ci_low"] <= b["accuracy"] <= b["ci_high"]
            assert set(b["music"]) == {"scale_consistency", "used_pitch_classes",
                                       "seconds_clusters", "voices_mean"}  # fmt: skip
        for key in ("pitch_range", "polyphony", "note_density", "mean_ioi", "scale_consistency",
                    "groove_consistency", "empty_beat_rate", "pitch_class_histogram",
                    "pitch_class_transitions"):  # fmt: skip
            assert 0 <= m[f"{key}_overlap"] <= 1.0 + 1e-6
        assert m["frechet_distance"] is None or m["frechet_distance"] >= 0
        if m["num_pieces_with_notes"] < 2:  # a tiny model may write no notes: said so
            assert "music_stats_note" in m and m["mean_overlap"] == 0.0
    tasks = metrics["tasks"]  # the candidate harmonizing and infilling the test pieces
    assert tasks["num_pieces"] >= 2
    harmonize, infill = tasks["harmonize"], tasks["infill"]
    assert harmonize["given_notes_changed"] == 0 and harmonize["num_given_notes"] > 0
    assert infill["given_tokens_changed"] == 0 and infill["num_bars"] == 2
    for result, name in ((harmonize, "harmonized"), (infill, "infilled")):
        for arm in (name, "unconditional"):
            m = result[arm]
            assert m["accuracy"] == max(p["accuracy"] for p in m["probes"].values())
            assert m["ci_low"] <= m["accuracy"] <= m["ci_high"]
        pair = result["comparisons"][f"{name}_vs_unconditional"]
        assert pair["accuracy_a"] == result[name]["probes"][pair["probe"]]["accuracy"]
        assert pair["ci_low"] <= pair["difference"] <= pair["ci_high"]
    assert metrics["judges"] == {  # the default arm: rejection sampling on the music critic
        "estimator": "rejection", "reward": "music", "trained_against": ["music_critic"],
        "selected_by": ["learned", "music", "combined"], "held_out": ["voice_leading"],
    }  # fmt: skip
    spread = metrics["diversity"]  # what over-optimization would show, paired against each other
    assert set(spread["models"]) == {"mle", "gan", "control"}
    assert set(spread["comparisons"]) == {"gan_vs_control", "gan_vs_mle", "control_vs_mle"}
    for measure in spread["measures"]:
        m = spread["models"]["gan"][measure]
        assert m["ci_low"] <= m["mean"] <= m["ci_high"]
        pair = spread["comparisons"]["gan_vs_control"][measure]
        assert pair["ci_low"] <= pair["difference"] <= pair["ci_high"] and 0 < pair["p_value"] <= 1
    assert 0 <= spread["models"]["mle"]["train_8grams"]["mean"] <= 1
    judge = metrics["voice_leading"]  # the held-out judge: rule rates, and as a probe
    assert judge["rules"] == list(voice_leading.RULES)
    assert set(judge["real"]) == set(voice_leading.RULES)
    assert judge["real"]["parallel_octaves"] < 0.1 and judge["real"]["voice_crossing"] < 0.1
    for name in ("mle", "gan", "control"):
        m = judge["models"][name]
        assert m["ci_low"] <= m["accuracy"] <= m["ci_high"] and set(m["rates"]) == set(
            judge["real"]
        )
        assert len(m["position_bins"]) == 2
    assert set(judge["comparisons"]) == {"gan_vs_control", "gan_vs_mle", "control_vs_mle"}
    pair = judge["comparisons"]["gan_vs_control"]
    assert (
        pair["probe"] == "voice_leading" and pair["ci_low"] <= pair["difference"] <= pair["ci_high"]
    )
    assert pair["accuracy_a"] == judge["models"]["gan"]["accuracy"]
    assert {"unigram", "4gram"} <= set(metrics["baselines"])
    assert metrics["sampling"] == {"temperature": 0.9, "top_k": 0, "top_p": 0.95, "grammar": False,
                                   "pitch_top_p": 1.0}  # fmt: skip
    plain = metrics["plain_sampling"]  # the same MLE generator at temperature 1, same windows
    assert plain["mle"]["num_windows"] == metrics["mle"]["num_windows"]
    versus = plain["mle_vs_plain"]
    assert versus["accuracy_a"] == metrics["mle"]["probes"][versus["probe"]]["accuracy"]
    assert versus["accuracy_b"] == plain["mle"]["probes"][versus["probe"]]["accuracy"]
    assert set(metrics["comparisons"]) == {"gan_vs_control", "gan_vs_mle", "control_vs_mle"}
    pair = metrics["comparisons"]["gan_vs_control"]
    assert pair["accuracy_b"] == metrics["control"]["probes"][pair["probe"]]["accuracy"]
    assert pair["difference"] == pytest.approx(pair["accuracy_a"] - pair["accuracy_b"])
    assert pair["ci_low"] <= pair["difference"] <= pair["ci_high"] and 0 < pair["p_value"] <= 1
    assert pair["accuracy_a"] == metrics["gan"]["probes"][pair["probe"]]["accuracy"]
    report = repo / "reports" / "evaluate"
    html = (report / "index.html").read_text()
    for figure in ("probes.png", "positions.png"):
        assert (report / figure).read_bytes()[:4] == b"\x89PNG" and figure in html
    assert "gan_vs_control" in html and "Paired comparisons" in html and "Voice leading" in html
    windows = np.load(report / "windows.npz")
    assert windows["real_tokens"].shape == (12, 2, 16)
    assert windows["samples_mle"].shape == windows["samples_gan"].shape == (12, 48)
    assert windows["samples_control"].shape == (12, 48)
    for name in ("real", "mle", "gan", "tasks_bach", "tasks_harmonized", "tasks_infilled"):
        for i in range(2):
            midi = report / "samples" / name / f"{name}_{i}.mid"
            assert Score(str(midi)).ticks_per_quarter > 0
            assert (report / "samples" / name / f"{name}_{i}.png").read_bytes()[:4] == b"\x89PNG"
            assert f"samples/{name}/{name}_{i}.png" in html
            assert f"src='samples/{name}/{name}_{i}.mp3'" in html
            assert (report / "samples" / name / f"{name}_{i}.mp3").stat().st_size > 0
    assert metrics["audio"] == "mp3 rendered with tinysoundfont"
    lock = (repo / "dvc.lock").read_text()
    assert "evaluate:" in lock and "register:" in lock

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.data.metrics["mle.test_nll"] == pytest.approx(metrics["mle"]["test_nll"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"lineage.json", "report"} <= artifacts
    assert "report/positions.png" in {
        a.path for a in client.list_artifacts(run.info.run_id, "report")
    }
    assert run.data.metrics["gan.position_bins.0.start"] == 0
    kept = {a.path for a in client.list_artifacts(run.info.run_id, "report/samples/gan")}
    assert "report/samples/gan/gan_0.mp3" in kept


def test_gallery_writes_a_player_beside_each_piano_roll(tmp_path, chorale_dir):
    from cadenza import audio
    from cadenza.evaluation import gallery

    scores = {"real": [Score(str(p)) for p in sorted(chorale_dir.glob("*.mid"))[:1]]}
    made = gallery.write_gallery(scores, tmp_path / "samples", render_audio=True)
    item = made.items["real"][0]
    assert made.audio_note == "" and item.audio == tmp_path / "samples/real/real_0.mp3"
    seconds = scores["real"][0].to("second").end() + audio.TAIL_SECONDS
    assert audio.duration_seconds(item.audio) == pytest.approx(seconds, abs=0.2)
    gallery.write_report(tmp_path / "index.html", "t", {}, made)
    page = (tmp_path / "index.html").read_text()
    assert "<audio controls preload='metadata' src='samples/real/real_0.mp3'>" in page


def test_gallery_renders_in_two_processes_what_one_renders(tmp_path, chorale_dir):
    """Four pieces or more render in two worker processes: the same bytes as one by one."""
    from cadenza import audio
    from cadenza.evaluation import gallery

    scores = {"real": [Score(str(p)) for p in sorted(chorale_dir.glob("*.mid"))[:4]]}
    assert len(scores["real"]) == 4
    made = gallery.write_gallery(scores, tmp_path / "samples", render_audio=True)
    for item in made.items["real"]:
        alone = audio.render(item.midi, tmp_path / item.audio.name, audio.AudioSpec())
        assert item.audio.read_bytes() == alone.read_bytes()


def test_piano_roll_draws_every_note_where_a_bar_per_note_would(tmp_path, chorale_dir):
    """The piano roll draws each track's notes as one collection: pixel for pixel what one
    broken_barh per note draws (the slow way), and a piece with other notes differs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as image
    import matplotlib.pyplot as plt

    from cadenza.evaluation import gallery

    def per_note(score, path):
        tpq = float(score.ticks_per_quarter)
        fig, ax = plt.subplots(figsize=(8, 2.6), dpi=80)
        for index, track in enumerate(score.tracks):
            for note in track.notes:
                width = max(note.duration / tpq, 0.05)
                ax.broken_barh([(note.time / tpq, width)], (note.pitch - 0.4, 0.8),
                               color=f"C{index % 10}")  # fmt: skip
        ax.set_xlabel("beats")
        ax.set_ylabel("pitch")
        ax.set_title("t", fontsize=9)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)

    score = Score(str(sorted(chorale_dir.glob("*.mid"))[0]))
    gallery.piano_roll_png(score, tmp_path / "fast.png", "t")
    per_note(score, tmp_path / "slow.png")
    fast, slow = image.imread(tmp_path / "fast.png"), image.imread(tmp_path / "slow.png")
    assert score.note_num() > 50 and np.array_equal(fast, slow)
    score.tracks[0].notes[0].pitch += 7
    gallery.piano_roll_png(score, tmp_path / "moved.png", "t")
    assert not np.array_equal(image.imread(tmp_path / "moved.png"), slow)


def test_gallery_without_audio_says_why(tmp_path, chorale_dir):
    from cadenza.evaluation import gallery

    scores = {"real": [Score(str(p)) for p in sorted(chorale_dir.glob("*.mid"))[:1]]}
    made = gallery.write_gallery(scores, tmp_path / "samples", render_audio=False)
    assert made.items["real"][0].audio is None and "switched off" in made.audio_note


def test_candidate_rule_needs_the_gan_to_beat_its_control():
    from cadenza.config import RegisterSettings
    from cadenza.evaluation.candidates import choose_candidate

    def pair(difference, p_value):
        return {"difference": difference, "ci_low": difference - 0.02,
                "ci_high": difference + 0.02, "p_value": p_value, "probe": "music"}  # fmt: skip

    def metrics(gan_vs_control, control_vs_mle, gan_nll=1.0):
        return {
            "gan": {"test_nll": gan_nll}, "control": {"test_nll": 1.0}, "mle": {"test_nll": 1.0},
            "comparisons": {"gan_vs_control": gan_vs_control, "gan_vs_mle": pair(-0.2, 0.01),
                            "control_vs_mle": control_vs_mle},
        }  # fmt: skip

    rules = RegisterSettings(alpha=0.05, max_nll_increase=0.02)
    assert choose_candidate(metrics(pair(-0.1, 0.01), pair(0, 1)), "auto", rules) == "gan"
    # Beating the MLE model is not enough: the control may be what made the difference.
    assert choose_candidate(metrics(pair(-0.01, 0.4), pair(-0.2, 0.01)), "auto", rules) == "control"
    assert choose_candidate(metrics(pair(-0.01, 0.4), pair(0.0, 1.0)), "auto", rules) == "mle"
    # Harder to tell from real but too costly in NLL against the control.
    costly = metrics(pair(-0.1, 0.01), pair(0, 1), gan_nll=1.05)
    assert choose_candidate(costly, "auto", rules) == "mle"
    assert choose_candidate(costly, "gan", rules) == "gan"
