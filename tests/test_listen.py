"""`cadenza listen`: a real study (MIDI rendered to MP3), the real FastAPI app, votes in real
SQLite and PostgreSQL databases, a load test over loopback, and headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cadenza import audio
from cadenza.config import ListenSettings
from cadenza.listen import results, votes
from cadenza.listen.app import create_app
from cadenza.listen.study import build_study, load_study

from .conftest import free_port, make_midi, wait_for_http

NUM_PAIRS = 10
CLIP_SECONDS = 3.0
PLAYING = "const a = document.getElementById('clip-1'); return [a.currentTime, a.error];"


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """10 pairs of 3 s MP3 clips: low rising lines (source a) vs high ones (source b)."""
    base = tmp_path_factory.mktemp("listen")
    for i in range(NUM_PAIRS):
        make_midi(base / "low-source" / f"l{i}.mid", num_notes=12, pitch=40 + i)
        make_midi(base / "high-source" / f"h{i}.mid", num_notes=12, pitch=72 + i, gap_ticks=240)
    settings = ListenSettings(num_pairs=NUM_PAIRS, clip_seconds=CLIP_SECONDS)
    source_a, source_b = str(base / "low-source"), str(base / "high-source")
    return build_study(base / "study", source_a, source_b, settings, base)


def form_fields(page: str) -> dict:
    """pair id, csrf token and the two clip ids from the listening page."""
    fields = dict(re.findall(r'name="(pair|csrf)" value="([^"]+)"', page))
    fields["clips"] = re.findall(r'name="preferred" value="([0-9a-f]+)"', page)
    return fields


def client_for(study, url):
    from fastapi.testclient import TestClient

    return TestClient(create_app(study, url), follow_redirects=False)


def test_clips_are_equal_length_and_nothing_served_names_a_source(study, tmp_path):
    assert len(study.pairs) == NUM_PAIRS and len(study.clips) == 2 * NUM_PAIRS
    sides = [study.clips[p["left"]]["side"] for p in study.pairs.values()]
    assert 0 < sides.count("a") < NUM_PAIRS  # which side plays first is drawn at random
    for clip_id in study.clips:
        path = study.clip_path(clip_id)
        assert re.fullmatch(r"[0-9a-f]{16}\.mp3", path.name)
        assert audio.duration_seconds(path) == pytest.approx(CLIP_SECONDS, abs=0.03)
        assert b"source" not in path.read_bytes().lower()  # no tags naming where it came from
    client = client_for(study, f"sqlite:///{tmp_path / 'v.db'}")
    page = client.get("/").text
    for secret in ("low", "high", "source", "study", str(study.folder)):
        assert secret not in page.lower().replace("listening test", "")
    fields = form_fields(page)
    assert set(fields["clips"]) == {study.pairs[fields["pair"]][s] for s in ("left", "right")}
    served = client.get(f"/clip/{fields['clips'][0]}")
    assert served.status_code == 200 and served.headers["content-type"] == "audio/mpeg"
    assert served.content == study.clip_path(fields["clips"][0]).read_bytes()
    assert "filename" not in served.headers.get("content-disposition", "")


def test_every_bad_post_is_refused_and_stores_nothing(study, tmp_path):
    url = f"sqlite:///{tmp_path / 'votes.db'}"
    client = client_for(study, url)
    fields = form_fields(client.get("/").text)
    left, right = fields["clips"]
    good = {"pair": fields["pair"], "preferred": left, "human": right, "csrf": fields["csrf"]}
    stranger = client_for(study, url)
    stranger_csrf = form_fields(stranger.get("/").text)["csrf"]
    other_pair = next(p for p in study.pairs if p != fields["pair"])
    cases = {
        "no cookie": (403, good, {"cadenza_listener": ""}),
        "forged cookie": (403, good, {"cadenza_listener": "x.y"}),
        "no csrf token": (422, {**good, "csrf": None}, None),
        "bad csrf token": (403, {**good, "csrf": fields["csrf"] + "x"}, None),
        "another listener's token": (403, {**good, "csrf": stranger_csrf}, None),
        "unknown pair": (404, {**good, "pair": "0" * 16}, None),
        "clip of another pair": (400, {**good, "pair": other_pair}, None),
        "tampered preferred": (400, {**good, "preferred": "f" * 16}, None),
        "tampered human": (400, {**good, "human": "e" * 16}, None),
        "oversized field": (422, {**good, "pair": "a" * 5000}, None),
    }
    for name, (status, data, cookie) in cases.items():
        sender = client
        if cookie is not None:  # a client holding only this cookie (or none)
            sender = client_for(study, url)
            if cookie["cadenza_listener"]:
                sender.cookies.set("cadenza_listener", cookie["cadenza_listener"])
        answer = sender.post("/vote", data={k: v for k, v in data.items() if v is not None})
        assert answer.status_code == status, (name, answer.text)
    assert votes.all_votes(votes.connect(url), study.name) == []

    client = client_for(study, url)
    fields = form_fields(client.get("/").text)
    vote = {"pair": fields["pair"], "preferred": fields["clips"][1], "csrf": fields["csrf"]}
    first = client.post("/vote", data=vote)
    assert first.status_code == 303 and first.headers["location"] == "/"
    assert client.post("/vote", data=vote).status_code == 409  # replayed
    assert client.post("/vote", data={**vote, "preferred": fields["clips"][0]}).status_code == 409
    rows = votes.all_votes(votes.connect(url), study.name)
    assert len(rows) == 1 and rows[0]["preferred_clip"] == fields["clips"][1]
    assert rows[0]["human_clip"] is None
    assert form_fields(client.get("/").text)["pair"] != fields["pair"]  # the next pair


def test_clip_urls_cannot_leave_the_study_folder(study, tmp_path):
    client = client_for(study, f"sqlite:///{tmp_path / 'v.db'}")
    for path in ("/clip/..%2Fstudy.json", "/clip/..%2Fsecret.key", "/clip/%2e%2e",
                 "/clip/../study.json", "/clip/0123456789abcdef", "/study.json"):  # fmt: skip
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert b"admin_token" not in answer.content
    tampered = tmp_path / "study"
    shutil.copytree(study.folder, tampered)
    manifest = json.loads((tampered / "study.json").read_text())
    clip_id = next(iter(manifest["clips"]))
    manifest["clips"][clip_id]["file"] = "clips/../secret.key"
    (tampered / "study.json").write_text(json.dumps(manifest))
    assert load_study(tampered).clip_path(clip_id) is None
    assert (
        client_for(load_study(tampered), f"sqlite:///{tmp_path / 'v.db'}")
        .get(f"/clip/{clip_id}")
        .status_code
        == 404
    )


def test_results_wilson_interval_and_csv_export(study, tmp_path):
    url = f"sqlite:///{tmp_path / 'votes.db'}"
    # 7 listeners prefer source b on the first pair, 3 prefer source a
    pair = study.pairs[sorted(study.pairs)[0]]
    side_b = next(c for c in (pair["left"], pair["right"]) if study.clips[c]["side"] == "b")
    side_a = pair["left"] if side_b == pair["right"] else pair["right"]
    engine = votes.connect(url)
    for i in range(10):
        chosen = side_b if i < 7 else side_a
        votes.add_vote(engine, study=study.name, pair_id=pair["id"], listener=f"l{i}",
                       left_clip=pair["left"], right_clip=pair["right"],
                       preferred_clip=chosen, human_clip=side_a if i < 4 else None)  # fmt: skip
    result = results.results(study, url)
    b = result.sides["b"]
    assert (b.wins, b.num_votes, result.num_listeners) == (7, 10, 10)
    # Wilson 95% for 7/10, from the closed form: (p + z²/2n ± z√(p(1-p)/n + z²/4n²)) / (1+z²/n)
    assert (b.ci_low, b.ci_high) == pytest.approx((0.3968, 0.8922), abs=1e-4)
    assert result.sides["a"].preference == pytest.approx(0.3)
    assert (result.sides["a"].human, result.sides["a"].num_human_answers) == (4, 4)
    client = client_for(study, url)
    assert client.get("/admin/votes.csv?token=wrong").status_code == 403
    csv = client.get(f"/admin/votes.csv?token={study.manifest['admin_token']}").text
    lines = csv.strip().splitlines()
    assert len(lines) == 11 and lines[0].endswith("preferred_side,human_side")
    assert sum(line.split(",")[-2] == "b" for line in lines[1:]) == 7


def test_votes_in_a_real_postgresql_server(study):
    from .postgres import postgres_server

    with postgres_server() as url:
        client = client_for(study, url)
        fields = form_fields(client.get("/").text)
        vote = {"pair": fields["pair"], "preferred": fields["clips"][0], "csrf": fields["csrf"]}
        assert client.post("/vote", data=vote).status_code == 303
        assert client.post("/vote", data=vote).status_code == 409
        stored = votes.all_votes(votes.connect(url), study.name)
        assert [(r["pair_id"], r["preferred_clip"]) for r in stored] == [
            (fields["pair"], fields["clips"][0])
        ]
        assert results.results(study, url).num_votes == 1


@pytest.fixture
def served(study, tmp_path):
    """`cadenza listen serve` in a subprocess on a free loopback port; yields (url, db url)."""
    port = free_port()
    db = f"sqlite:///{tmp_path / 'votes.db'}"
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "cadenza.cli", "listen", "serve", str(study.folder),
               "--db", db, "--port", str(port),
               "--params", str(Path(__file__).resolve().parents[1] / "params.yaml")]  # fmt: skip
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", server, log.read_text, 60)
        yield f"http://127.0.0.1:{port}", db
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_twenty_concurrent_listeners_lose_and_double_no_vote(study, served):
    import httpx

    base, db = served
    answers: dict[str, list[int]] = {}

    def listener(index: int) -> None:
        codes = answers.setdefault(f"listener{index}", [])
        with httpx.Client(base_url=base, timeout=30) as client:
            for _ in range(NUM_PAIRS):
                fields = form_fields(client.get("/").text)
                vote = {"pair": fields["pair"], "preferred": fields["clips"][index % 2],
                        "csrf": fields["csrf"]}  # fmt: skip
                codes.append(client.post("/vote", data=vote).status_code)
            codes.append(client.post("/vote", data=vote).status_code)  # one replay each
            assert "Thank you" in client.get("/").text

    threads = [threading.Thread(target=listener, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == 20
    assert all(codes == [303] * NUM_PAIRS + [409] for codes in answers.values()), answers
    rows = votes.all_votes(votes.connect(db), study.name)
    assert len(rows) == 20 * NUM_PAIRS
    assert len({(r["listener"], r["pair_id"]) for r in rows}) == 20 * NUM_PAIRS
    per_listener = {}
    for row in rows:
        per_listener.setdefault(row["listener"], set()).add(row["pair_id"])
    assert len(per_listener) == 20 and all(p == set(study.pairs) for p in per_listener.values())


def test_a_listener_in_headless_chromium_plays_and_votes_through_every_pair(study, served):
    import os

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("Debian's chromium is not installed: apt-get install chromium chromium-driver")
    pytest.importorskip("selenium", reason="selenium is in the dev extras: pip install selenium")
    from selenium import webdriver
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    between_pages = (NoSuchElementException, StaleElementReferenceException)

    base, db = served
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--mute-audio",
                 "--window-size=1000,640"):  # fmt: skip
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver_path))
    chosen = []
    try:
        browser.get(base + "/")
        for index in range(NUM_PAIRS):
            wait = WebDriverWait(browser, 20, ignored_exceptions=between_pages)
            wait.until(
                lambda b, i=index: f"Pair {i + 1} of" in b.find_element(By.ID, "progress").text
            )
            browser.find_element(By.CSS_SELECTOR, "button.play[data-clip='clip-1']").click()
            wait.until(lambda b: b.execute_script(PLAYING)[0] > 0.2)  # decoded and playing
            assert browser.execute_script(PLAYING)[1] is None
            preferred = browser.find_elements(By.NAME, "preferred")[index % 3 == 0]
            preferred.click()
            browser.find_elements(By.NAME, "human")[0].click()
            chosen.append(preferred.get_attribute("value"))
            if index == 0:
                png = browser.get_screenshot_as_png()
                assert png[:4] == b"\x89PNG"
                if folder := os.environ.get("CADENZA_SCREENSHOT_DIR"):
                    Path(folder, "listen-page.png").write_bytes(png)
            browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 20, ignored_exceptions=between_pages).until(
            lambda b: b.find_elements(By.ID, "done")
        )
        assert f"all {NUM_PAIRS} pairs" in browser.find_element(By.ID, "done").text
    finally:
        browser.quit()
    rows = votes.all_votes(votes.connect(db), study.name)
    assert [row["preferred_clip"] for row in rows] == chosen
    assert {row["pair_id"] for row in rows} == set(study.pairs)
    assert len({row["listener"] for row in rows}) == 1
    result = results.results(study, db)
    wins_b = sum(study.clips[clip]["side"] == "b" for clip in chosen)
    assert (result.num_votes, result.sides["b"].wins) == (NUM_PAIRS, wins_b)
    assert result.sides["a"].wins + result.sides["b"].wins == NUM_PAIRS
    print(
        f"browser run: {result.num_votes} votes, source b preferred {wins_b}/{NUM_PAIRS} = "
        f"{result.sides['b'].preference:.0%} (Wilson 95% CI {result.sides['b'].ci_low:.0%}-"
        f"{result.sides['b'].ci_high:.0%})"
    )


def _tags(**listening) -> dict:
    base = {"metrics.discriminative_accuracy": "0.6", "metrics.test_nll": "1.0",
            "validation.passed": "true", "evaluation.status": "ok", "run_id": "champ"}  # fmt: skip
    return {**base, **{f"listening.{k}": str(v) for k, v in listening.items()}}


def test_the_listening_rule_of_the_promotion_gate():
    from cadenza.config import RegisterSettings
    from cadenza.tracking.challenge import Challenge
    from cadenza.tracking.registry import gate

    champion = {**_tags(), "metrics.discriminative_accuracy": "0.8"}
    # The paired comparison favours the challenger: only the listening rule can stop it.
    won = Challenge({"difference": -0.1, "ci_low": -0.2, "ci_high": -0.02, "p_value": 0.01,
                     "probe": "music"}, 1.0, "stored samples")  # fmt: skip
    off = RegisterSettings()
    assert gate(_tags(), champion, off, won)[0]  # the rule is off by default
    rule = RegisterSettings(listening_min_votes=20, listening_min_preference=0.55)
    ok, why = gate(_tags(), champion, rule, won)
    assert not ok and "no listening study against the champion" in why
    heard = {"vs_run_id": "champ", "ci_low": 0.4, "ci_high": 0.8}
    ok, why = gate(_tags(**heard, preference=0.6, votes=12), champion, rule, won)
    assert not ok and "fewer than register.listening_min_votes 20" in why
    ok, why = gate(_tags(**heard, preference=0.5, votes=40), champion, rule, won)
    assert not ok and "below register.listening_min_preference 0.55" in why
    assert gate(_tags(**heard, preference=0.6, votes=40), champion, rule, won)[0]
    stale = {**heard, "vs_run_id": "an-older-champion"}
    assert not gate(_tags(**stale, preference=0.9, votes=40), champion, rule, won)[0]


@pytest.mark.integration
def test_a_study_of_two_registry_versions_tags_both_and_shows_in_status(
    registered_project, tmp_path
):
    import mlflow
    import yaml

    from .conftest import run_in

    repo = tmp_path / "repo"
    shutil.copytree(registered_project["repo"], repo, ignore=shutil.ignore_patterns("*.lock"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["listen"].update(num_pairs=2, piece_tokens=64, clip_seconds=2.0)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    built = run_in(repo, "cadenza", "listen", "build", "models:/cadenza-generator/1",
                   "models:/cadenza-generator/2", "--out", "studies/v1-v2")  # fmt: skip
    assert "2 pairs of 2 s mp3 clips" in built.stdout
    study = load_study(repo / "studies" / "v1-v2")
    assert study.manifest["sources"]["b"]["model_version"] == "2"
    db = f"sqlite:///{tmp_path / 'votes.db'}"
    for _ in range(2):  # two listeners prefer version 2 on both pairs
        client = client_for(study, db)
        for _ in range(2):
            fields = form_fields(client.get("/").text)
            b = next(c for c in fields["clips"] if study.clips[c]["side"] == "b")
            vote = {"pair": fields["pair"], "preferred": b, "csrf": fields["csrf"]}
            assert client.post("/vote", data=vote).status_code == 303
    shown = run_in(repo, "cadenza", "listen", "results", "studies/v1-v2", "--db", db).stdout
    assert "4 votes from 2 listeners" in shown
    assert "models:/cadenza-generator/2: preferred in 4 of 4 votes, 100.0%" in shown
    assert "logged to cadenza-generator v1" in shown and "logged to cadenza-generator v2" in shown
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    one, two = (client.get_model_version("cadenza-generator", v) for v in ("1", "2"))
    assert two.tags["listening.vs"] == "cadenza-generator v1"
    assert two.tags["listening.vs_run_id"] == one.run_id
    assert float(two.tags["listening.preference"]) == 1.0 and two.tags["listening.votes"] == "4"
    assert float(one.tags["listening.preference"]) == 0.0
    assert client.get_run(two.run_id).data.metrics["listening_preference"] == 1.0
    status = run_in(repo, "cadenza", "registry", "status", env={"COLUMNS": "250"}).stdout
    assert "100% [51%-100%] n=4 vs cadenza-generator v1" in status
    assert "0% [0%-49%] n=4 vs cadenza-generator v2" in status


def test_a_matched_study_pairs_each_piece_with_its_other_version(tmp_path):
    for i in range(5):  # the k-th file of each folder is one piece's two versions
        make_midi(tmp_path / "bach" / f"bach_{i}.mid", num_notes=12, pitch=50 + i)
        make_midi(tmp_path / "model" / f"model_{i}.mid", num_notes=12, pitch=50 + i, gap_ticks=240)
    settings = ListenSettings(num_pairs=3, clip_seconds=1.0)
    study = build_study(
        tmp_path / "study", str(tmp_path / "bach"), str(tmp_path / "model"), settings, tmp_path,
        matched=True,
    )  # fmt: skip
    pieces = study.manifest["matched"]
    assert sorted(pieces) == sorted(study.pairs) and len(pieces) == 3
    for pair_id, (name_a, name_b) in pieces.items():
        assert name_a.removeprefix("bach_") == name_b.removeprefix("model_")
        pair = study.pairs[pair_id]
        assert {study.clips[pair[s]]["side"] for s in ("left", "right")} == {"a", "b"}
    assert len({names[0] for names in pieces.values()}) == 3  # three different pieces
    page = client_for(study, f"sqlite:///{tmp_path / 'v.db'}").get("/").text
    assert "bach" not in page and "model_" not in page  # the page names no file

    make_midi(tmp_path / "model" / "extra.mid")
    with pytest.raises(ValueError, match="has 5 MIDI files and .*model 6"):
        build_study(tmp_path / "s2", str(tmp_path / "bach"), str(tmp_path / "model"), settings,
                    tmp_path, matched=True)  # fmt: skip
    with pytest.raises(ValueError, match="listen.num_pairs = 9"):
        build_study(tmp_path / "s3", str(tmp_path / "bach"), str(tmp_path / "bach"),
                    ListenSettings(num_pairs=9), tmp_path, matched=True)  # fmt: skip
    assert not (tmp_path / "s2").exists() and not (tmp_path / "s3").exists()


def test_harmonizations_against_bach_from_the_evaluation_gallery(registered_project, tmp_path):
    import yaml

    from .conftest import run_in

    repo = tmp_path / "repo"
    shutil.copytree(registered_project["repo"], repo, ignore=shutil.ignore_patterns("*.lock"))
    samples = repo / "reports" / "evaluate" / "samples"
    count = len(list((samples / "tasks_bach").glob("*.mid")))
    assert count >= 1 and count == len(list((samples / "tasks_harmonized").glob("*.mid")))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["listen"].update(num_pairs=count + 1, clip_seconds=2.0)  # one more than there is
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bach, harmonized = str(samples / "tasks_bach"), str(samples / "tasks_harmonized")
    command = ["cadenza", "listen", "build", bach, harmonized, "--matched", "--out", "studies/h"]
    short = run_in(repo, *command, check=False)
    assert short.returncode == 1 and f"listen.num_pairs = {count + 1}" in short.stderr
    built = run_in(repo, *command, "--pairs", str(count))
    assert f"{count} pairs of 2 s mp3 clips" in built.stdout
    study = load_study(repo / "studies" / "h")
    for name_a, name_b in study.manifest["matched"].values():
        assert name_a.removeprefix("tasks_bach_") == name_b.removeprefix("tasks_harmonized_")
    model = "models:/cadenza-generator/1"
    refused = run_in(
        repo,
        "cadenza",
        "listen",
        "build",
        model,
        bach,
        "--matched",
        "--out",
        "studies/x",
        check=False,
    )
    assert refused.returncode == 1 and "--matched pairs two folders" in refused.stderr
