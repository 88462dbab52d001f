"""Data lineage of a model: what it was trained on, recorded when it is evaluated.

The evaluate stage logs lineage.json into its MLflow run (the run each registry version
points at): git commit, params and their hash, the dvc.lock hashes of the corpus, manifest
and tokens, the corpus name, every file of the corpus (path, sha256, status, split), the
manifest digest and the quarantined files. `cadenza lineage` reads it back, forwards (a
version or run -> its data) and in reverse (a MIDI file -> the versions trained on data that
contained it).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cadenza.io import file_digest
from cadenza.paths import BASE_RECORD, Paths
from cadenza.tracking.lineage_tags import dvc_lock_hash, git_commit

LINEAGE_FILE = "lineage.json"


def params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def build_record(paths: Paths, params: dict) -> dict:
    """The lineage of what is in the workspace now (after validate, split and tokenize)."""
    manifest = pd.read_parquet(paths.manifest_path)
    splits = (
        pd.read_csv(paths.splits_path)[["path", "split"]]
        if paths.splits_path.is_file()
        else pd.DataFrame(columns=["path", "split"])
    )
    files = manifest.merge(splits, on="path", how="left")
    files["split"] = files["split"].fillna("")
    quarantined = files[files["status"] == "quarantined"]
    validate = paths.metrics_path("validate")
    validation = json.loads(validate.read_text()) if validate.is_file() else {}
    return {
        "git_commit": git_commit(paths.root),
        "params": params,
        "params_hash": params_hash(params),
        "corpus": paths.corpus,
        "dvc": {
            f"{name}_md5": dvc_lock_hash(
                paths.root, paths.stage_name(stage), paths.relative(out), paths.dvc_lock_path
            )
            for name, stage, out in (
                ("corpus", "import", paths.raw_dir),
                ("manifest", "validate", paths.manifest_path),
                ("splits", "split", paths.splits_path),
                ("tokens", "tokenize", paths.tokens_dir),
            )
        },
        "manifest_sha256": file_digest(paths.manifest_path),
        "validation_passed": bool(validation.get("suite_success", False)),
        "num_files": int(len(files)),
        "num_usable": int((files["status"] == "ok").sum()),
        "files": [
            {"path": r.path, "sha256": r.sha256, "status": r.status, "split": r.split}
            for r in files.itertuples()
        ],
        "quarantined": [
            {"path": r.path, "reason_code": r.reason_code} for r in quarantined.itertuples()
        ],
        **({"base": base} if (base := _base_of(paths)) else {}),
    }


def _base_of(paths: Paths) -> dict | None:
    """The base record of the target's pretrained model (pretrain.init = base), if any."""
    record = paths.generator_mle_dir / BASE_RECORD
    if paths.scope or not record.is_file():
        return None
    return json.loads(record.read_text())


@dataclass
class VersionRef:
    name: str
    version: str
    run_id: str
    aliases: list[str]


def resolve(client, target: str, model_name: str) -> tuple[VersionRef | None, str]:
    """A models:/name@alias, models:/name/version, a bare version number or a run id ->
    (registry version or None, run id)."""
    if target.startswith("models:/"):
        rest = target.removeprefix("models:/")
        if "@" in rest:
            name, alias = rest.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        elif "/" in rest:
            name, version = rest.split("/", 1)
            mv = client.get_model_version(name, version)
        else:
            raise ValueError(f"{target}: expected models:/<name>@<alias> or models:/<name>/<n>")
    elif target.isdigit():
        mv = client.get_model_version(model_name, target)
    else:
        run = client.get_run(target)
        return None, run.info.run_id
    mv = client.get_model_version(mv.name, mv.version)  # aliases filled in
    return VersionRef(mv.name, str(mv.version), mv.run_id, list(mv.aliases)), mv.run_id


def load_record(client, run_id: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, LINEAGE_FILE, tmp)
        except Exception as exc:  # noqa: BLE001 - MLflow raises several kinds for "absent"
            raise FileNotFoundError(
                f"run {run_id} has no {LINEAGE_FILE}: it was not made by `cadenza evaluate`"
            ) from exc
        return json.loads(Path(local).read_text())


def chain(client, target: str, model_name: str) -> dict:
    """Registry version -> run -> git commit -> params -> dvc hashes -> corpus -> files."""
    ref, run_id = resolve(client, target, model_name)
    run = client.get_run(run_id)
    record = load_record(client, run_id)
    base = (record.get("base") or {}).get("lineage")
    if base:
        record["base"]["version"] = _base_version(client, base.get("mlflow_run_id", ""))
    return {
        "target": target,
        "version": None if ref is None else ref.__dict__,
        "run": {
            "id": run_id,
            "name": run.info.run_name,
            "experiment_id": run.info.experiment_id,
            "stage_runs": {
                k.removeprefix("cadenza.run."): v
                for k, v in run.data.tags.items()
                if k.startswith("cadenza.run.")
            },
        },
        **record,
    }


def _base_version(client, run_id: str) -> dict | None:
    """The registry version (cadenza-base or whatever name) made from a base run."""
    if not run_id:
        return None
    for mv in client.search_model_versions(f"run_id='{run_id}'"):
        full = client.get_model_version(mv.name, mv.version)
        return {"name": full.name, "version": str(full.version), "aliases": list(full.aliases)}
    return None


def versions_with_file(client, model_name: str, file: Path | None, sha256: str | None) -> list:
    """Every registry version whose corpus held the file (matched by content, or by path
    within the corpus when only a path is given that no longer exists)."""
    digest = sha256 or (file_digest(file) if file is not None and file.is_file() else None)
    hits = []
    for mv in client.search_model_versions(f"name='{model_name}'"):
        try:
            record = load_record(client, mv.run_id)
        except FileNotFoundError:
            continue
        base = (record.get("base") or {}).get("lineage") or None
        for via, corpus_record in (("target", record), ("base", base)):
            if corpus_record is None:
                continue
            entry = _find(corpus_record["files"], file, digest)
            if entry is not None:
                hits.append(
                    {
                        "version": str(mv.version),
                        "run_id": mv.run_id,
                        "via": via,
                        "corpus": corpus_record["corpus"],
                        "corpus_md5": corpus_record["dvc"]["corpus_md5"],
                        "path": entry["path"],
                        "status": entry["status"],
                        "split": entry["split"],
                    }
                )
                break
    return sorted(hits, key=lambda hit: int(hit["version"]))


def _find(files: list[dict], file: Path | None, digest: str | None) -> dict | None:
    for entry in files:
        if entry["sha256"] == digest if digest else _path_match(file, entry["path"]):
            return entry
    return None


def _path_match(file: Path | None, corpus_path: str) -> bool:
    if file is None:
        return False
    parts = file.as_posix()
    return parts == corpus_path or parts.endswith("/" + corpus_path)
