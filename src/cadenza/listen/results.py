"""Votes -> preference with a Wilson 95% interval, and onto the registry's model versions.

Each side's preference is the share of votes that picked its clip (the two add up to 1). When
listeners also said which clip sounds composed by a person, each side's "human" share is
reported the same way. A side that is a registry version gets tags listening.* (read by
`cadenza registry status` and by the optional promotion rule) and metrics on its run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from scipy.stats import binomtest

from cadenza.listen import votes
from cadenza.listen.study import SIDES, Study
from cadenza.tracking.runs import client


@dataclass
class SideResult:
    side: str
    source: str
    wins: int
    num_votes: int
    preference: float
    ci_low: float
    ci_high: float
    human: int
    num_human_answers: int


@dataclass
class StudyResult:
    study: str
    num_votes: int
    num_listeners: int
    sides: dict[str, SideResult]

    def to_dict(self) -> dict:
        return {**asdict(self), "sides": {k: asdict(v) for k, v in self.sides.items()}}


def wilson(successes: int, trials: int) -> tuple[float, float, float]:
    """(share, low, high): the 95% Wilson score interval; (nan, 0, 1) with no trials."""
    if trials == 0:
        return float("nan"), 0.0, 1.0

    interval = binomtest(successes, trials).proportion_ci(0.95, method="wilson")
    return successes / trials, float(interval.low), float(interval.high)


def aggregate(study: Study, rows: list[dict]) -> StudyResult:
    clips = study.clips
    preferred = [clips[row["preferred_clip"]]["side"] for row in rows]
    human = [clips[row["human_clip"]]["side"] for row in rows if row["human_clip"]]
    sides = {}
    for side in SIDES:
        wins = preferred.count(side)
        share, low, high = wilson(wins, len(rows))
        sides[side] = SideResult(
            side, study.manifest["sources"][side]["source"], wins, len(rows), share, low, high,
            human.count(side), len(human),
        )  # fmt: skip
    listeners = len({row["listener"] for row in rows})
    return StudyResult(study.name, len(rows), listeners, sides)


def results(study: Study, database_url: str) -> StudyResult:
    return aggregate(study, votes.all_votes(votes.connect(database_url), study.name))


def log_to_registry(study: Study, result: StudyResult, root: Path) -> list[str]:
    """Tags on each side that is a registry version (metrics on its run); returns
    "name vN" for each version written."""
    sources = study.manifest["sources"]
    versions = [s for s in SIDES if sources[s].get("model_version")]
    if not versions:
        return []
    mlflow_client = client(root)
    written = []
    for side in versions:
        other = "b" if side == "a" else "a"
        mine, theirs = result.sides[side], sources[other]
        tags = {
            "listening.study": study.name,
            "listening.vs": theirs.get("model_version") and (
                f"{theirs['model_name']} v{theirs['model_version']}"
            ) or theirs["source"],
            "listening.vs_run_id": theirs.get("run_id", ""),
            "listening.preference": repr(mine.preference),
            "listening.ci_low": repr(mine.ci_low),
            "listening.ci_high": repr(mine.ci_high),
            "listening.votes": str(mine.num_votes),
            "listening.listeners": str(result.num_listeners),
        }  # fmt: skip
        name, version = sources[side]["model_name"], sources[side]["model_version"]
        for key, value in tags.items():
            mlflow_client.set_model_version_tag(name, version, key, value)
        run_id = sources[side].get("run_id")
        if run_id and mine.num_votes:
            for key in ("preference", "ci_low", "ci_high"):
                mlflow_client.log_metric(run_id, f"listening_{key}", getattr(mine, key))
            mlflow_client.log_metric(run_id, "listening_votes", mine.num_votes)
        written.append(f"{name} v{version}")
    return written
