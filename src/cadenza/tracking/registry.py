"""The MLflow Model Registry side: register the evaluated candidate, gate its promotion.

Each evaluated candidate becomes a version of `cadenza-generator` (register.model_name)
carrying tags: git.commit, dvc hashes of corpus/manifest/tokens, params.hash, run_id, the
metrics the gate reads, and the gate's decision, reason and paired comparison. The new version
gets alias `challenger`; it also gets `champion` when the gate holds:
- its evaluation exists and its data validation passed (never overridden, not even by force);
- against the champion, paired on the current evaluation's windows (tracking/challenge.py:
  the champion is re-evaluated when the corpus, split or tokenizer changed since its own
  evaluation), the challenger's discriminative accuracy is lower with p < register.alpha;
- its test NLL is at most register.max_nll_increase above the champion's on the same split.
A model registered against itself never wins: identical samples give a difference of 0.
- optionally (register.listening_min_votes > 0), listeners preferred it to the champion in a
  `cadenza listen` study (see listening_rule).
Promotions take a lock next to the store, so two at once are serialised: each compares
against the champion the other left, and exactly one champion remains.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from cadenza.config import EvaluateSettings, RegisterSettings
from cadenza.io import file_digest, replace_dir, write_json
from cadenza.paths import LINEAGE, Paths
from cadenza.tracking.runs import client, tracking_uri

CHAMPION = "champion"
CHALLENGER = "challenger"


class RegistryError(RuntimeError):
    """Nothing to register or promote, or the registry refused; the message says why."""


@dataclass
class Decision:
    version: str
    promoted: bool
    reason: str
    champion: str | None
    previous_champion: str | None
    new_version: bool
    comparison: dict | None = None  # challenger vs champion, when one was made


def dvc_experiment() -> str | None:
    """The DVC experiment this process runs in (DVC sets DVC_EXP_NAME and
    DVC_EXP_BASELINE_REV for `dvc exp run`), or None."""
    if os.environ.get("DVC_EXP_BASELINE_REV") or os.environ.get("DVC_EXP_NAME"):
        return os.environ.get("DVC_EXP_NAME") or "(unnamed)"
    return None


def _not_in_experiment(paths: Paths, model_name: str, experiment: str) -> Decision:
    decision = Decision(
        "", False,
        f"DVC experiment {experiment}: not registered (an experiment never moves the "
        "registry; `dvc exp apply` it, commit, and run `cadenza register`)",
        None, None, new_version=False,
    )  # fmt: skip
    write_json(
        paths.metrics_path("register"),
        {"model_name": model_name, "experiment": experiment, **asdict(decision)},
    )
    return decision


def client_for(paths: Paths):
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return client(paths.root)


@contextlib.contextmanager
def registry_lock(paths: Paths, timeout: float = 300) -> Iterator[None]:
    path = paths.root / ".cadenza-registry.lock"
    try:
        with FileLock(str(path), timeout=timeout):
            yield
    except Timeout:
        raise RegistryError(
            f"{path}: another promotion has held the registry lock for {timeout:.0f} s; "
            "wait for it to finish (or remove the file if no cadenza process is running)"
        ) from None


def champion_version(client, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # noqa: BLE001 - MLflow raises RestException/MlflowException when unset
        return None


def _number(tags: dict, key: str) -> float | None:
    try:
        value = float(tags[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def gate(
    candidate: dict, champion: dict | None, settings: RegisterSettings, challenge=None
) -> tuple[bool, str]:
    """(promote?, why) from the version tags and the paired comparison with the champion
    (a tracking.challenge.Challenge, or None when there is none)."""
    accuracy = _number(candidate, "metrics.discriminative_accuracy")
    nll = _number(candidate, "metrics.test_nll")
    if candidate.get("evaluation.status") != "ok" or accuracy is None or nll is None:
        return False, "evaluation missing or failed: no promotion without one"
    if settings.require_validation and candidate.get("validation.passed") != "true":
        return False, "data validation did not pass for this version's corpus"
    if champion is None:
        return True, "no champion yet; evaluation and validation passed"
    if refusal := listening_rule(candidate, champion, settings):
        return False, refusal
    if challenge is None:
        return False, (
            "no paired comparison with the champion on the current test split (this version "
            "is not the workspace's current evaluation): re-evaluate it, or promote with --force"
        )
    # lazy: the evaluation library loads torch, scikit-learn and scipy (seconds), which
    # `registry status`, `promote --force` and `rollback` never need
    from cadenza.evaluation.instrument import evidence_for

    promote, why = evidence_for(
        challenge.comparison, nll, challenge.champion_nll, settings.alpha,
        settings.max_nll_increase,
    )  # fmt: skip
    return promote, f"vs champion {champion.get('version', '')}: {why}".replace("  ", " ")


def listening_rule(candidate: dict, champion: dict, settings: RegisterSettings) -> str | None:
    """Why listeners block the promotion (None when they do not, or the rule is off):
    register.listening_min_votes > 0 asks for a `cadenza listen` study of the candidate
    against this champion (matched by run id) with that many votes, the candidate preferred
    in at least register.listening_min_preference of them."""
    needed = settings.listening_min_votes
    if needed == 0:
        return None
    if not candidate.get("listening.vs_run_id") or (
        candidate.get("listening.vs_run_id") != champion.get("run_id")
    ):
        return f"no listening study against the champion yet (needs {needed} votes)"
    votes = int(_number(candidate, "listening.votes") or 0)
    share = _number(candidate, "listening.preference") or 0.0
    low = _number(candidate, "listening.ci_low") or 0.0
    high = _number(candidate, "listening.ci_high") or 1.0
    heard = f"listeners preferred it in {share:.0%} of {votes} votes (95% CI {low:.0%}-{high:.0%})"
    if votes < needed:
        return f"{heard}: fewer than register.listening_min_votes {needed}"
    if share < settings.listening_min_preference:
        return (
            f"{heard}: below register.listening_min_preference {settings.listening_min_preference}"
        )
    return None


def version_tags(evaluation: dict, record: dict) -> dict[str, str]:
    candidate = evaluation["candidate"]
    metrics = evaluation[candidate]
    return {
        "git.commit": record["git_commit"],
        "dvc.corpus_md5": record["dvc"]["corpus_md5"],
        "dvc.manifest_md5": record["dvc"]["manifest_md5"],
        "dvc.tokens_md5": record["dvc"]["tokens_md5"],
        "params.hash": record["params_hash"],
        "run_id": evaluation["mlflow_run_id"],
        "corpus": record["corpus"],
        "candidate": candidate,
        "samples.fingerprint": evaluation.get("samples_fingerprint", ""),
        "evaluation.status": "ok",
        "validation.passed": str(record["validation_passed"]).lower(),
        "metrics.test_nll": repr(metrics["test_nll"]),
        "metrics.discriminative_accuracy": repr(metrics["discriminative_accuracy"]),
        "metrics.discriminative_accuracy_ci_low": repr(metrics["discriminative_accuracy_ci_low"]),
        "metrics.discriminative_accuracy_ci_high": repr(metrics["discriminative_accuracy_ci_high"]),
        "metrics.discriminative_probe": metrics["discriminative_probe"],
        "metrics.discriminative_auc": repr(metrics["discriminative_auc"]),
        "metrics.frechet_distance": str(metrics["frechet_distance"]),
        "metrics.mean_overlap": repr(metrics["mean_overlap"]),
    }


def register(
    paths: Paths, settings: RegisterSettings, evaluate: EvaluateSettings | None = None
) -> Decision:
    """Register the last evaluation's candidate (once) and run the promotion gate. Inside a
    DVC experiment (`dvc exp run`, queued or not) nothing is registered: an experiment must
    not move the registry's aliases; `dvc exp apply` it and register the result."""
    if experiment := dvc_experiment():
        return _not_in_experiment(paths, settings.model_name, experiment)
    evaluation_path = paths.metrics_path("evaluate")
    if not evaluation_path.is_file():
        raise RegistryError(f"{evaluation_path}: no evaluation; run `cadenza evaluate` first")
    evaluation = json.loads(evaluation_path.read_text())
    if "model_uri" not in evaluation:
        raise RegistryError(
            f"{evaluation_path}: the evaluation logged no model (it ran without MLflow); "
            "re-run `cadenza evaluate`"
        )
    lineage = paths.root / "reports" / "evaluate" / "lineage.json"
    record = json.loads(lineage.read_text())
    client = client_for(paths)
    name = settings.model_name
    with registry_lock(paths):
        _ensure_model(client, name)
        run_id = evaluation["mlflow_run_id"]
        existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        if existing:
            mv = client.get_model_version(name, existing[0].version)
            champion = champion_version(client, name)
            decision = Decision(
                str(mv.version),
                champion is not None and str(champion.version) == str(mv.version),
                "already registered from this evaluation run: nothing changed",
                None if champion is None else str(champion.version),
                None,
                new_version=False,
            )
        else:
            import mlflow  # lazy: mlflow takes seconds to import; only tracking needs it

            mlflow.set_tracking_uri(tracking_uri(paths.root))
            mv = mlflow.register_model(
                evaluation["model_uri"], name, tags=version_tags(evaluation, record)
            )
            client.set_registered_model_alias(name, CHALLENGER, mv.version)
            decision = _decide(
                client, name, str(mv.version), settings, new_version=True,
                context=(paths, evaluate or EvaluateSettings()),
            )  # fmt: skip
    write_json(paths.metrics_path("register"), {"model_name": name, **asdict(decision)})
    return decision


def _ensure_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException  # lazy: as mlflow

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(
                name, description="Cadenza symbolic-music generator (Transformer-XL, MIDI tokens)"
            )
        except MlflowException:
            client.get_registered_model(name)  # created meanwhile by another process


def _decide(
    client, name: str, version: str, settings: RegisterSettings, new_version: bool,
    force: bool = False, context: tuple[Paths, EvaluateSettings] | None = None,
) -> Decision:  # fmt: skip
    """Gate one version against the current champion; set aliases and tags. Call locked."""
    tags = client.get_model_version(name, version).tags
    version = str(version)
    champion = champion_version(client, name)
    if champion is not None and str(champion.version) == version:
        return Decision(version, True, "already the champion", version, None, new_version)
    champion_tags = None if champion is None else {**champion.tags, "version": champion.version}
    challenge = None
    if champion is not None and not force and context is not None:
        challenge = _challenge(client, name, tags, champion, *context)
        if isinstance(challenge, str):  # the champion could not be scored: why
            return _record(client, name, version, False, challenge, champion, new_version)
    promote, reason = gate(tags, champion_tags, settings, challenge)
    if force and not promote and not reason.startswith(("evaluation", "data validation")):
        promote, reason = True, f"forced by hand over the gate ({reason})"
    if challenge is None:
        return _record(client, name, version, promote, reason, champion, new_version)
    _tag_comparison(client, name, version, challenge, str(champion.version))
    decision = _record(client, name, version, promote, reason, champion, new_version)
    decision.comparison = {
        "champion_version": str(champion.version),
        "champion_test_nll": challenge.champion_nll,
        "champion_scored_from": challenge.how,
        **challenge.comparison,
    }
    return decision


def _challenge(client, name, tags, champion, paths: Paths, evaluate: EvaluateSettings):
    """The paired comparison with the champion, or a sentence saying why there is none."""
    from cadenza.tracking.challenge import ChallengeError, challenge  # lazy: as above

    evaluation = paths.metrics_path("evaluate")
    current = json.loads(evaluation.read_text()) if evaluation.is_file() else {}
    if current.get("mlflow_run_id") != tags.get("run_id"):
        return None
    try:
        return challenge(paths, evaluate, client, name, champion, tags.get("dvc.tokens_md5", ""))
    except ChallengeError as exc:
        return f"not compared with champion {champion.version}: {exc}"


def _tag_comparison(client, name: str, version: str, challenge, champion: str) -> None:
    c = challenge.comparison
    values = {
        "comparison.champion_version": champion,
        "comparison.probe": c["probe"],
        "comparison.difference": repr(c["difference"]),
        "comparison.ci_low": repr(c["ci_low"]),
        "comparison.ci_high": repr(c["ci_high"]),
        "comparison.p_value": repr(c["p_value"]),
        "comparison.champion_test_nll": repr(challenge.champion_nll),
        "comparison.champion_scored_from": challenge.how,
    }
    for key, value in values.items():
        client.set_model_version_tag(name, version, key, value)


def _record(client, name, version, promote: bool, reason: str, champion, new_version: bool):
    previous = None if champion is None else str(champion.version)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
        if previous is not None:
            client.set_model_version_tag(name, version, "previous_champion", previous)
    client.set_model_version_tag(name, version, "decision", "promoted" if promote else "rejected")
    client.set_model_version_tag(name, version, "decision.reason", reason)
    return Decision(
        version, promote, reason, version if promote else previous, previous, new_version
    )


def record_hand(client, name: str, version: str, action: str, by: str, why: str) -> None:
    """A decision taken by hand: who, why and what, kept as the version's tags."""
    for key, value in (("action", action), ("by", by), ("reason", why)):
        client.set_model_version_tag(name, version, f"hand.{key}", value)


def promote(
    paths: Paths,
    settings: RegisterSettings,
    version: str,
    force: bool = False,
    evaluate: EvaluateSettings | None = None,
    by: str = "",
    why: str = "",
):
    """Run the gate on `version` by hand; `by` and `why` are recorded on it (hand.* tags)."""
    client = client_for(paths)
    with registry_lock(paths):
        client.get_model_version(settings.model_name, version)  # raises when absent
        context = (paths, evaluate or EvaluateSettings())
        decision = _decide(client, settings.model_name, version, settings, False, force, context)
        if why:
            action = "promote" + (" --force" if force else "")
            if not decision.promoted:
                action += " (refused by the gate)"
            record_hand(client, settings.model_name, version, action, by, why)
        return decision


def rollback(paths: Paths, settings: RegisterSettings, by: str = "", why: str = ""):
    """Give `champion` back to the version it replaced; returns (from, to). `by` and `why`
    are recorded on both versions (hand.* tags)."""
    client = client_for(paths)
    name = settings.model_name
    with registry_lock(paths):
        champion = champion_version(client, name)
        if champion is None:
            raise RegistryError(f"{name}: no champion to roll back")
        previous = champion.tags.get("previous_champion")
        if not previous:
            raise RegistryError(
                f"{name} version {champion.version} replaced no earlier champion; "
                "promote a version by hand instead "
                "(`cadenza registry promote N --force --reason ...`)"
            )
        client.set_registered_model_alias(name, CHAMPION, previous)
        client.set_model_version_tag(name, champion.version, "decision", "rolled back")
        if why:
            record_hand(client, name, str(champion.version), "rolled back", by, why)
            record_hand(client, name, previous, f"restored by rollback of v{champion.version}",
                        by, why)  # fmt: skip
        return str(champion.version), previous


def status(paths: Paths, settings: RegisterSettings) -> list[dict]:
    """Every version, newest first, with aliases, metrics and decision."""
    client = client_for(paths)
    rows = []
    for found in client.search_model_versions(f"name='{settings.model_name}'"):
        mv = client.get_model_version(found.name, found.version)
        rows.append(
            {
                "version": str(mv.version),
                "aliases": sorted(mv.aliases),
                "run_id": mv.run_id,
                "created": mv.creation_timestamp,
                **{k: v for k, v in mv.tags.items()},
            }
        )
    return sorted(rows, key=lambda row: -int(row["version"]))


def base_gate(candidate: dict, champion: dict | None, settings: RegisterSettings):
    """(promote?, why) for a base model: validation passed, and on the same tokenized corpus
    its test NLL is at most max_nll_increase above the champion's (a new corpus is a new
    base: its NLL is not comparable, so it is promoted on validation alone)."""
    nll = _number(candidate, "metrics.test_nll")
    if nll is None:
        return False, "no test NLL: no promotion without one"
    if settings.require_validation and candidate.get("validation.passed") != "true":
        return False, "data validation did not pass for the base corpus"
    if champion is None:
        return True, "no base champion yet; validation passed"
    champ_nll = _number(champion, "metrics.test_nll")
    if champion.get("dvc.tokens_md5") != candidate.get("dvc.tokens_md5") or champ_nll is None:
        return True, f"a new base corpus (test NLL {nll:.4f}, not comparable with the champion's)"
    if nll > champ_nll + settings.max_nll_increase:
        return False, (
            f"test NLL {nll:.4f} exceeds the base champion's {champ_nll:.4f} by more than "
            f"{settings.max_nll_increase} on the same corpus"
        )
    return True, f"test NLL {nll:.4f} vs base champion {champ_nll:.4f} on the same corpus"


def register_base(paths: Paths, settings: RegisterSettings) -> Decision:
    """Register the base pipeline's model (models/generator-base/, logged by its pretrain run)
    as a version of register.model_name (cadenza-base), once per run; gate its promotion.
    Inside a DVC experiment nothing is registered."""
    if experiment := dvc_experiment():
        return _not_in_experiment(paths, settings.model_name, experiment)
    base_dir = paths.generator_mle_dir
    lineage_path = base_dir / LINEAGE
    if not lineage_path.is_file():
        raise RegistryError(f"{lineage_path}: no base model; run the base pretrain stage first")
    record = json.loads(lineage_path.read_text())
    run_id = record.get("mlflow_run_id")
    if not run_id:
        raise RegistryError(
            f"{lineage_path}: the base was trained without MLflow tracking; re-run its pretrain"
        )
    client = client_for(paths)
    name = settings.model_name
    tags = {
        "git.commit": record["git_commit"],
        "corpus": record["corpus"],
        "dvc.corpus_md5": record["dvc"]["corpus_md5"],
        "dvc.tokens_md5": record["dvc"]["tokens_md5"],
        "validation.passed": str(record["validation_passed"]).lower(),
        "metrics.test_nll": repr(record["test_nll"]),
        "num_files": str(record["num_files"]),
        "num_usable": str(record["num_usable"]),
        "weights_sha256": file_digest(base_dir / "model.safetensors"),
        "run_id": run_id,
        "evaluation.status": "ok",
    }
    with registry_lock(paths):
        _ensure_model(client, name)
        existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        if existing:
            version = str(existing[0].version)
            champion = champion_version(client, name)
            decision = Decision(
                version,
                champion is not None and str(champion.version) == version,
                "already registered from this pretrain run: nothing changed",
                None if champion is None else str(champion.version),
                None,
                new_version=False,
            )
        else:
            source = f"{client.get_run(run_id).info.artifact_uri}/{base_dir.name}"
            mv = client.create_model_version(name, source, run_id=run_id, tags=tags)
            version = str(mv.version)
            client.set_registered_model_alias(name, CHALLENGER, version)
            champion = champion_version(client, name)
            promote_it, reason = base_gate(
                tags, None if champion is None else champion.tags, settings
            )
            previous = None if champion is None else str(champion.version)
            if promote_it:
                client.set_registered_model_alias(name, CHAMPION, version)
                if previous is not None:
                    client.set_model_version_tag(name, version, "previous_champion", previous)
            client.set_model_version_tag(
                name, version, "decision", "promoted" if promote_it else "rejected"
            )
            client.set_model_version_tag(name, version, "decision.reason", reason)
            decision = Decision(
                version, promote_it, reason, version if promote_it else previous, previous, True
            )
    write_json(paths.metrics_path("register"), {"model_name": name, **asdict(decision)})
    return decision


def fetch_base_champion(paths: Paths, model_name: str) -> str:
    """Make models/generator-base/ the base champion's weights (what a nightly retrain with
    pretrain.init = base starts from). Returns what happened, in words."""
    client = client_for(paths)
    champion = champion_version(client, model_name)
    if champion is None:
        raise RegistryError(
            f"pretrain.init = base but {model_name} has no champion: build and register a base "
            "first (`dvc repro base/dvc.yaml`, or the weekly-base-retrain deployment)"
        )
    target = paths.base_model_dir
    weights = target / "model.safetensors"
    wanted = champion.tags.get("weights_sha256", "")
    if weights.is_file() and file_digest(weights) == wanted:
        return f"{model_name} version {champion.version} (champion) is already in {target}"

    paths.models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.models_dir, prefix=".fetch-") as tmp:
        import mlflow  # lazy: mlflow takes seconds to import; only tracking needs it

        local = Path(
            mlflow.artifacts.download_artifacts(
                champion.source, dst_path=tmp, tracking_uri=tracking_uri(paths.root)
            )
        )
        if file_digest(local / "model.safetensors") != wanted:
            raise RegistryError(
                f"{model_name} version {champion.version}: downloaded weights do not match the "
                "weights_sha256 tag; the artifact store may be corrupt"
            )
        staging = target.with_name(f".{target.name}.incoming")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(local, staging)
        replace_dir(staging, target)
    return f"{model_name} version {champion.version} (champion) fetched into {target}"
