"""Orchestration overhead: the Prefect `retrain` flow against `dvc repro` alone, same stages.

    python benchmarks/orchestration_overhead.py [--chorales 8] [--preset tiny]

Builds a throwaway git + DVC project on the first N Bach chorales (tiny models by default),
then times, each with every stage forced to run:
  1. `dvc repro --force` (the reference: the stages alone),
  2. `cadenza retrain --force --no-push` (the flow: Prefect API start, concurrency slot,
     dvc status, one task and one `dvc repro --single-item` per stage, MLflow parent run,
     artifacts),
and then a flow run with nothing changed. Prints the times and the ratio flow / dvc repro.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]


def sh(repo: Path, *command: str) -> float:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{repo / 'mlflow.db'}"
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    started = time.perf_counter()
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def make_project(root: Path, chorales: int, preset: str) -> Path:
    from cadenza.config import ImportSettings
    from cadenza.paths import Paths
    from cadenza.stages import import_corpus as corpus_import

    corpus_import.run(ImportSettings(limit=chorales), Paths(root=root / "src-corpus"))
    repo = root / "repo"
    repo.mkdir()
    shutil.copy(PROJECT / "dvc.yaml", repo)
    shutil.copytree(PROJECT / "src" / "cadenza", repo / "src" / "cadenza")
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["import"].update(corpus="mine", source="folder", path="data/external/mine")
    params["split"].update(train=0.5, valid=0.25, test=0.25, seed=1)
    params["pretrain"]["preset"] = preset
    params["tokenize"].update(transpositions=[], time_stretches=[])
    params["pretrain_discriminator"].update(max_steps=20, seq_len=32, d_model=32, n_layers=1)
    params["adversarial"].update(
        max_steps=4, sample_len=32, chunk_len=16, batch_size=2, sample_batch=2,
        eval_interval=2, checkpoint_interval=2,
    )  # fmt: skip
    params["evaluate"].update(
        num_chunks=8, chunk_len=16, warmup_tokens=8, num_pieces=4, piece_len=64, folds=2,
        bootstrap=50, render_audio=False,
    )  # fmt: skip
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(root / "src-corpus" / "data" / "raw" / "bach", repo / "data/external/mine")
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "b@example.com"],
                    ["git", "config", "user.name", "bench"], ["dvc", "init", "-q"],
                    ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):  # fmt: skip
        sh(repo, *command)
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chorales", type=int, default=8)
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_project(Path(tmp), args.chorales, args.preset)
        sh(repo, "dvc", "repro")  # warm: first registration, caches, MLflow store migrated
        reference = sh(repo, "dvc", "repro", "--force")
        flow = sh(repo, "cadenza", "retrain", "--force", "--no-push")
        unchanged = sh(repo, "cadenza", "retrain", "--no-push")
    print(f"dvc repro --force (reference)     {reference:7.1f} s")
    print(f"cadenza retrain --force (flow)    {flow:7.1f} s")
    print(f"cadenza retrain, nothing changed  {unchanged:7.1f} s")
    print(f"ratio flow / dvc repro: {flow / reference:.2f}x (+{flow - reference:.1f} s)")


if __name__ == "__main__":
    main()
