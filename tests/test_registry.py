"""Registry, promotion gate, lineage and serving, against a project that went twice through
the real DVC pipeline (two corpus versions -> two model versions)."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from symusic import Score

from cadenza.config import RegisterSettings
from cadenza.tracking.registry import gate

from .conftest import free_port, make_midi, run_in, wait_for_http

pytestmark = pytest.mark.integration
NAME = "cadenza-generator"


def _tags(accuracy=0.8, nll=1.0, validation="true", status="ok") -> dict:
    return {
        "metrics.discriminative_accuracy": str(accuracy),
        "metrics.test_nll": str(nll),
        "validation.passed": validation,
        "evaluation.status": status,
    }


def _challenge(difference=-0.1, p_value=0.01, champion_nll=1.0):
    from cadenza.tracking.challenge import Challenge

    comparison = {"difference": difference, "ci_low": difference - 0.05,
                  "ci_high": difference + 0.05, "p_value": p_value, "probe": "music"}  # fmt: skip
    return Challenge(comparison, champion_nll, "stored samples")


def test_gate_rules():
    settings = RegisterSettings(alpha=0.05, max_nll_increase=0.02)
    assert gate(_tags(), None, settings)[0]
    assert gate(_tags(), _tags(), settings, _challenge())[0]
    ok, why = gate(_tags(), _tags(), settings, _challenge(p_value=0.2))
    assert not ok and "not lower at alpha 0.05" in why
    ok, why = gate(_tags(), _tags(), settings, _challenge(difference=0.1, p_value=0.01))
    assert not ok and "not lower" in why  # significantly worse is not better
    ok, why = gate(_tags(nll=1.03), _tags(), settings, _challenge(champion_nll=1.0))
    assert not ok and "test NLL" in why
    ok, why = gate(_tags(), _tags(), settings, None)
    assert not ok and "no paired comparison" in why
    ok, why = gate(_tags(validation="false"), None, settings)
    assert not ok and "validation" in why
    assert gate(_tags(validation="false"), None, RegisterSettings(require_validation=False))[0]
    ok, why = gate({"validation.passed": "true"}, None, settings)
    assert not ok and "evaluation missing" in why
    assert not gate(_tags(accuracy="nan"), None, settings)[0]


def _client(repo):
    import mlflow

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    return mlflow.MlflowClient(uri, registry_uri=uri)


def _version(client, number: str):
    return client.get_model_version(NAME, number)


def test_two_corpus_versions_make_two_tagged_model_versions(registered_project):
    repo = registered_project["repo"]
    client = _client(repo)
    versions = sorted(client.search_model_versions(f"name='{NAME}'"), key=lambda v: int(v.version))
    assert [str(v.version) for v in versions] == ["1", "2"]
    one, two = (_version(client, str(v.version)) for v in versions)
    for mv in (one, two):
        for key in ("git.commit", "dvc.corpus_md5", "dvc.tokens_md5", "params.hash", "run_id"):
            assert mv.tags[key] and mv.tags[key] != "unknown", key
        assert mv.tags["run_id"] == mv.run_id
        assert mv.tags["decision"] in ("promoted", "rejected")
        assert mv.tags["decision.reason"]
    assert one.tags["decision"] == "promoted" and "no champion yet" in one.tags["decision.reason"]
    assert one.tags["dvc.corpus_md5"] != two.tags["dvc.corpus_md5"]
    # The corpus changed, so the champion (version 1) was re-evaluated on version 2's windows
    # and the paired comparison decided; its numbers are tags.
    assert two.tags["comparison.champion_version"] == "1"
    assert two.tags["comparison.champion_scored_from"] == "re-evaluated on the current test split"
    low, high = (float(two.tags[f"comparison.ci_{k}"]) for k in ("low", "high"))
    assert low <= float(two.tags["comparison.difference"]) <= high
    assert 0 < float(two.tags["comparison.p_value"]) <= 1
    assert one.tags["git.commit"] != two.tags["git.commit"]
    assert "challenger" in two.aliases
    champion = client.get_model_version_by_alias(NAME, "champion")
    expected = "2" if two.tags["decision"] == "promoted" else "1"
    assert str(champion.version) == expected
    register = json.loads((repo / "metrics" / "register.json").read_text())
    assert register["version"] == "2" and register["champion"] == expected


def _chain(repo, target: str) -> dict:
    from cadenza.tracking.lineage import chain

    return chain(_client(repo), target, NAME)


def test_lineage_walks_from_version_to_files(registered_project):
    repo = registered_project["repo"]
    import yaml

    for target, version, lock in (
        ("models:/cadenza-generator/1", "1", yaml.safe_load(registered_project["first_lock"])),
        ("2", "2", yaml.safe_load((repo / "dvc.lock").read_text())),
    ):
        answer = _chain(repo, target)
        assert answer["version"]["version"] == version
        stages = lock["stages"]
        corpus_out = stages["import"]["outs"][0]
        assert answer["dvc"]["corpus_md5"] == corpus_out["md5"]
        assert answer["dvc"]["tokens_md5"] == stages["tokenize"]["outs"][0]["md5"]
        assert answer["dvc"]["manifest_md5"] == stages["validate"]["outs"][0]["md5"]
        assert answer["corpus"] == "mine"
        assert set(answer["run"]["stage_runs"]) == {
            "pretrain", "pretrain_discriminator", "adversarial",
        }  # fmt: skip
        assert answer["params"]["pretrain"]["preset"] == "tiny"
        assert answer["validation_passed"] is True
        assert answer["quarantined"] == []
    one = json.loads(run_in(repo, "cadenza", "lineage", "1", "--json").stdout)  # the CLI
    two = _chain(repo, "2")
    assert one["num_files"] == 8 and two["num_files"] == 10
    assert {f["path"] for f in two["files"]} - {f["path"] for f in one["files"]} == {
        "new/added0.mid", "new/added1.mid",
    }  # fmt: skip
    assert one["git_commit"] != two["git_commit"]
    # By run id and by alias, the same chain; human output names every link.
    by_run = _chain(repo, two["run"]["id"])
    assert by_run["dvc"] == two["dvc"] and by_run["version"] is None
    text = run_in(repo, "cadenza", "lineage", "models:/cadenza-generator@challenger").stdout
    for needle in ("version 2", "git commit", "dvc.lock", "corpus:", "quarantine: 0 files"):
        assert needle in text


def test_lineage_by_file_finds_the_versions_trained_on_it(registered_project):
    from cadenza.tracking.lineage import versions_with_file

    repo = registered_project["repo"]
    added = registered_project["added"][0]
    answer = json.loads(run_in(repo, "cadenza", "lineage", "--file", str(added), "--json").stdout)
    assert [hit["version"] for hit in answer["versions"]] == ["2"]
    assert answer["versions"][0]["path"] == "new/added0.mid"
    old = repo / "data" / "raw" / "mine" / "synth0.mid"
    hits = versions_with_file(_client(repo), NAME, old, None)
    assert [hit["version"] for hit in hits] == ["1", "2"]
    gone = Path("data/raw/mine/new/added1.mid")  # no such file here: matched by corpus path
    assert [hit["version"] for hit in versions_with_file(_client(repo), NAME, gone, None)] == ["2"]
    stranger = make_midi(repo.parent / "stranger.mid", pitch=30)
    assert versions_with_file(_client(repo), NAME, stranger, None) == []
    missing = run_in(repo, "cadenza", "lineage", "models:/cadenza-generator/9", check=False)
    assert missing.returncode == 1 and "models:/cadenza-generator/9" in missing.stderr


def test_promote_rollback_and_refusals(registered_project):
    repo = registered_project["repo"]
    client = _client(repo)
    unexplained = run_in(repo, "cadenza", "registry", "promote", "1", "--force", check=False)
    assert unexplained.returncode == 2 and "--reason" in unexplained.stderr
    blank = run_in(repo, "cadenza", "registry", "rollback", "--reason", " ", check=False)
    assert blank.returncode == 2 and "--reason" in blank.stderr
    run_in(repo, "cadenza", "registry", "promote", "1", "--force", "--reason", "baseline")
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    run_in(repo, "cadenza", "registry", "promote", "2", "--force", "--reason", "newer data",
           "--by", "ana")  # fmt: skip
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    assert _version(client, "2").tags["previous_champion"] == "1"
    rolled = run_in(repo, "cadenza", "registry", "rollback", "--reason", "listeners hear hiss")
    assert "version 2 -> version 1" in rolled.stdout
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    two, one = _version(client, "2").tags, _version(client, "1").tags
    assert two["hand.action"] == "rolled back" and two["hand.reason"] == "listeners hear hiss"
    assert two["hand.by"] == "ci"  # git user.name of the project
    assert one["hand.action"] == "restored by rollback of v2"
    status = run_in(repo, "cadenza", "registry", "status", env={"COLUMNS": "200"}).stdout
    assert "champion" in status and "challenger" in status
    assert "version 2: rolled back by ci: listeners hear hiss" in status
    assert max(len(line) for line in status.splitlines()) <= 80, status  # an 80-column terminal

    # A version whose data validation failed is never promoted, not even by force.
    client.set_model_version_tag(NAME, "2", "validation.passed", "false")
    try:
        refused = run_in(
            repo, "cadenza", "registry", "promote", "2", "--force", "--reason", "x", check=False
        )
        assert refused.returncode == 1 and "validation" in refused.stderr
        assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    finally:
        client.set_model_version_tag(NAME, "2", "validation.passed", "true")

    # Nothing changed since the last registration: no new version.
    again = run_in(repo, "cadenza", "register")
    assert "nothing changed" in again.stdout
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2


def test_a_dvc_experiment_never_registers(registered_project):
    """`dvc exp run` sets DVC_EXP_NAME / DVC_EXP_BASELINE_REV: its register stage must leave
    versions and aliases as they were (an ablation must not move the champion)."""
    repo = registered_project["repo"]
    client = _client(repo)
    versions = len(client.search_model_versions(f"name='{NAME}'"))
    champion = client.get_model_version_by_alias(NAME, "champion").version
    kept = (repo / "metrics" / "register.json").read_text()
    try:
        experiment = {"DVC_EXP_NAME": "abl-hinge", "DVC_EXP_BASELINE_REV": "HEAD"}
        out = run_in(repo, "cadenza", "register", env=experiment)
        assert "DVC experiment abl-hinge: not registered" in out.stdout
        written = json.loads((repo / "metrics" / "register.json").read_text())
        assert written["experiment"] == "abl-hinge" and written["promoted"] is False
    finally:
        (repo / "metrics" / "register.json").write_text(kept)
    assert len(client.search_model_versions(f"name='{NAME}'")) == versions
    assert client.get_model_version_by_alias(NAME, "champion").version == champion


def test_racing_promotions_leave_one_champion(registered_project):
    repo = registered_project["repo"]
    from cadenza.pipeline import dvc_env

    env = dvc_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo / 'mlflow.db'}"
    racers = [
        subprocess.Popen(
            ["cadenza", "registry", "promote", version, "--force", "--reason", "race"],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for version in ("1", "2", "1", "2")
    ]
    outputs = [racer.communicate(timeout=120) for racer in racers]
    assert all(racer.returncode == 0 for racer in racers), outputs
    client = _client(repo)
    holders = [
        mv.version
        for mv in client.search_model_versions(f"name='{NAME}'")
        if "champion" in _version(client, str(mv.version)).aliases
    ]
    assert len(holders) == 1
    assert _version(client, str(holders[0])).tags["decision"] == "promoted"


def _post(port: int, records: list[dict]) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps({"dataframe_records": records}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_mlflow_models_serve_returns_midi(registered_project, tmp_path):
    from cadenza.pipeline import dvc_env

    repo = registered_project["repo"]
    env = dvc_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo / 'mlflow.db'}"
    port = free_port()
    server = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager",
         "local", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for_http(
            f"http://127.0.0.1:{port}/ping", server, lambda: server.stderr.read().decode(), 120
        )
        primer = base64.b64encode((registered_project["corpus"] / "synth1.mid").read_bytes())
        status, body = _post(
            port,
            [
                {"num_tokens": 48},  # every other field has a default
                {
                    "num_tokens": 48,
                    "temperature": 0.9,
                    "top_k": 8,
                    "seed": 2,
                    "primer": primer.decode(),
                },
            ],  # fmt: skip
        )
        assert status == 200, body
        plain, primed = body["predictions"]
        for prediction in (plain, primed):
            score = Score.from_midi(base64.b64decode(prediction["midi"]))
            assert score.note_num() == prediction["num_notes"]
        assert primed["num_notes"] > 0  # the primer's opening is part of the piece
        # Left out, sampling comes from the model: params' `sampling` when it was evaluated.
        carried = {"num_tokens": 48, "seed": 4}
        status, body = _post(port, [carried, {**carried, "temperature": 0.9, "top_p": 0.95}])
        assert status == 200, body
        by_default, explicit = body["predictions"]
        assert by_default["midi"] == explicit["midi"]
        status, body = _post(port, [{"num_tokens": 0, "temperature": 1.0, "top_k": 0, "seed": 0}])
        assert status == 400 and body["message"] == "num_tokens: 0 is outside 1..8192", body
        status, body = _post(port, [{"num_tokens": 8, "top_p": 1.5}])
        assert status == 400 and body["message"] == "top_p: 1.5 must be in (0, 1]", body
        status, body = _post(port, [{"num_tokens": 8, "pitch_top_p": 0.0}])
        assert status == 400 and body["message"] == "pitch_top_p: 0.0 must be in (0, 1]", body
        # Control through the served model: a melody harmonized, bars of a piece infilled.
        melody = (registered_project["corpus"] / "synth2.mid").read_bytes()
        piece = base64.b64encode(next(registered_project["corpus"].glob("*.mid")).read_bytes())
        status, body = _post(port, [
            {"num_tokens": 8, "task": "harmonize", "midi": base64.b64encode(melody).decode()},
            {"num_tokens": 8, "task": "infill", "midi": piece.decode(), "bars": "2:3"},
        ])  # fmt: skip
        assert status == 200, body
        harmonized, infilled = body["predictions"]
        voices = {t.name: t for t in Score.from_midi(base64.b64decode(harmonized["midi"])).tracks}
        given = Score.from_midi(melody).resample(480).tracks[0]
        assert [n.pitch for n in voices["Voice 1"].notes] == [n.pitch for n in given.notes]
        assert infilled["num_notes"] > 0
        for request, message in (
            ({"task": "transpose"}, "task: 'transpose' is not one of continue, harmonize, infill"),
            ({"task": "harmonize"}, "midi: task harmonize needs a MIDI file in base64"),
            ({"task": "infill", "midi": piece.decode()}, "bars: task infill needs bars 'A:B'"),
            ({"task": "infill", "midi": piece.decode(), "bars": "7:999"}, "bars: 7:999: the piece"),
            ({"task": "harmonize", "midi": "A" * 1_500_000}, "midi: larger than 1048576 bytes"),
        ):
            status, body = _post(port, [{"num_tokens": 8, **request}])
            assert status == 400 and body["message"].startswith(message), body
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_champion_with_other_voice_numbering_is_not_scored_on_these_windows(
    registered_project, monkeypatch
):
    """The same vocabulary with `voice_programs` flipped is another tokenizer for the gate:
    the champion's Program tokens would mean other parts, so it is not re-scored."""
    import mlflow

    from cadenza.tokens.tokenizer import build_tokenizer, load_tokenizer, uses_voice_programs
    from cadenza.tracking.challenge import ChallengeError, _load_champion

    repo = registered_project["repo"]
    client = _client(repo)
    champion = client.get_model_version_by_alias(NAME, "champion")
    current = load_tokenizer(repo / "data" / "tokens" / "tokenizer.json")
    velocities = sum(token.startswith("Velocity_") for token in current.vocab)
    flipped = build_tokenizer("REMI", velocities, (21, 109), 8, not uses_voice_programs(current))
    assert flipped.vocab == current.vocab
    monkeypatch.chdir(repo)
    # mlflow's process-wide URIs, restored to *unset* afterwards: restoring the resolved
    # values would pin every later in-process registration to this test's store.
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    monkeypatch.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # mlflow sets them too
        monkeypatch.setenv(variable, client.tracking_uri)
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_registry_uri(client.tracking_uri)
    assert _load_champion(NAME, champion, current) is not None  # same encoding: loads
    with pytest.raises(ChallengeError, match="voice_programs") as error:
        _load_champion(NAME, champion, flipped)
    assert "promote by hand" in str(error.value)
