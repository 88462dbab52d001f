"""Ablations of the adversarial stage as DVC experiments, read by the paired comparison.

    python benchmarks/ablations.py queue [NAMES]  # dvc exp run --queue -n abl-... -S ... each
    python benchmarks/ablations.py queue --seeds 4 [NAMES]  # each as abl-...-seed0..3
    dvc queue start -j 1                          # or: ablations.py queue --start
    python benchmarks/ablations.py table          # markdown table of gan_vs_control per run
    python benchmarks/ablations.py table --all-commits  # ... of experiments queued from any commit

Each experiment changes only `adversarial.*` params, so DVC re-runs the adversarial stage (GAN
arm and its control, from the same pretrained weights) and evaluate; register is a no-op
inside an experiment (DVC_EXP_NAME is set: see tracking/registry.py), so no ablation moves the
registry's champion. `table` reads `dvc exp show --json` (DVC 3) and prints, per experiment,
the overrides, the GAN-vs-control difference of the strongest probe with its 95% CI and
p-value, each arm's test NLL, and the learned probe's difference (for docs/EXPERIMENTS.md).
With `--seeds K` each recipe runs with adversarial.seed 0..K-1 (both arms), and the table adds
one row per recipe across its seeds: the mean of the per-seed differences with a t-interval
over seeds (`instrument.across_seeds`). A single run's interval leaves out the spread between
training runs, which for a fine-tuned arm is as wide (docs/LOG.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from cadenza.evaluation.instrument import across_seeds

# `make ablations` runs .venv/bin/python without .venv/bin on PATH; DVC's queue worker and the
# stages (`cmd: cadenza ...`) need dvc and cadenza from there.
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
DVC = "dvc"

# The paper's recipe (straight-through Gumbel-Softmax through the SpanBERT critic) written over
# the default's rejection-sampling settings; its ablations change one key of it.
PAPER: dict[str, object] = {
    "estimator": "gumbel", "adv_every": 4, "sample_batch": 8, "lr_adversarial": 0.0002,
}  # fmt: skip

# name -> overrides of params.yaml (adversarial section); the defaults are the baseline run.
# The losses standard / hinge / wgan-gp, freeze_layers and adv_optimizer shared were ablated
# and retired (docs/LOG.md, "Retired options": their rows run at the commit named there).
GRID: dict[str, dict[str, object]] = {
    "abl-default": {},
    "abl-paper": PAPER,
    "abl-weight1": {**PAPER, "adv_weight": 1.0},
    "abl-lr-adv-1e-3": {**PAPER, "lr_adversarial": 0.001},
    "abl-len256": {**PAPER, "sample_len": 256},
    "abl-every1": {**PAPER, "adv_every": 1},
    "abl-critic5": {**PAPER, "critic_steps": 5},
}


def override_arg(key: str, value: object, params_path: Path = Path("params.yaml")) -> str:
    """`adversarial.<key>=<value>` for a key written in params.yaml; DVC wants
    `+adversarial.<key>=<value>` for one that takes its default from the code."""
    written = {}
    if params_path.is_file():
        written = (yaml.safe_load(params_path.read_text()) or {}).get("adversarial") or {}
    return f"{'' if key in written else '+'}adversarial.{key}={value}"


SEED_SUFFIX = "-seed"


def recipe(name: str) -> tuple[str, dict[str, object]]:
    """(recipe name, overrides) of an experiment name, `<recipe>-seed<k>` adding seed=k."""
    base, _, seed = name.rpartition(SEED_SUFFIX)
    if base in GRID and seed.isdigit():
        return base, {**GRID[base], "seed": int(seed)}
    return name, dict(GRID.get(name, {}))


def queue(names: list[str], start: bool, seeds: int = 0) -> None:
    for name in names:
        runs = [(name, GRID[name])] if not seeds else [
            (f"{name}{SEED_SUFFIX}{k}", {**GRID[name], "seed": k}) for k in range(seeds)
        ]  # fmt: skip
        for run_name, values in runs:
            command = [DVC, "exp", "run", "--queue", "-n", run_name]
            for key, value in values.items():
                command += ["-S", override_arg(key, value)]
            print(" ".join(command), flush=True)
            subprocess.run(command, check=True, env=ENV)
    if start:
        subprocess.run([DVC, "queue", "start", "-j", "1"], check=True, env=ENV)


def _experiments(show: list) -> list[tuple[str, dict, dict]]:
    """(name, params, metrics) of every experiment in `dvc exp show --json` output."""
    out = []

    def visit(entry: dict, name: str | None) -> None:
        data = entry.get("data") or {}
        metrics = (data.get("metrics") or {}).get("metrics/evaluate.json", {}).get("data") or {}
        params = (data.get("params") or {}).get("params.yaml", {}).get("data") or {}
        if metrics:
            out.append((name or entry.get("name") or entry.get("rev", "?")[:7], params, metrics))
        for experiment in entry.get("experiments") or []:
            # a queued or running experiment shows its baseline's metrics: not its own row
            if (experiment.get("executor") or {}).get("state") not in (None, "success"):
                continue
            for rev in experiment.get("revs") or []:
                visit(rev, experiment.get("name") or rev.get("name"))

    for entry in show:
        visit(entry, entry.get("name") or entry.get("rev"))
    return out


def _experiments_only(show: list) -> list:
    """The commits that have experiments, each commit's own row kept (its baseline)."""
    return [entry for entry in show if entry.get("experiments")]


def describe(values: dict[str, object]) -> str:
    """An experiment's overrides as the table names them: `paper, key=value` for the paper's
    recipe and what it changes, `defaults` for none."""
    if all(key in values for key in PAPER):
        rest = [f"{k}={v}" for k, v in values.items() if k not in PAPER or v != PAPER[k]]
        return ", ".join(["paper", *rest])
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "defaults"


def _cell(c: dict | None) -> str:
    if not c:
        return "n/a"
    interval = f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
    return f"{c['difference']:+.3f} {interval}, p = {c['p_value']:.2f}"


def table(show: list) -> str:
    lines = [
        "| run | overrides | GAN − control, strongest probe [95% CI] | learned probe | "
        "test NLL GAN / control | candidate |",
        "|---|---|---|---|---|---|",
    ]
    by_recipe: dict[str, list[dict]] = {}
    for name, _, metrics in _experiments(show):
        pair = (metrics.get("comparisons") or {}).get("gan_vs_control")
        if pair is None:
            continue
        learned = pair.get("by_probe", {}).get("learned")
        base, values = recipe(name)
        if "seed" in values and base != name:
            by_recipe.setdefault(base, []).append(pair)
        overrides = describe(values)
        nll = f"{metrics['gan']['test_nll']:.4f} / {metrics['control']['test_nll']:.4f}"
        lines.append(
            f"| {name} | {overrides} | {_cell(pair)} ({pair['probe']}) | {_cell(learned)} | "
            f"{nll} | {metrics.get('candidate', '?')} |"
        )
    for base, pairs in by_recipe.items():
        if len(pairs) < 2:
            continue
        cells = []
        for probe in ("music", "learned"):
            found = [_probe_difference(pair, probe) for pair in pairs]
            cells.append(_seeds_cell(across_seeds([d for d in found if d is not None])))
        lines.append(
            f"| {base}, across {len(pairs)} seeds | mean of the per-seed differences, "
            f"t-interval over seeds | {cells[0]} (music) | {cells[1]} | | |"
        )
    return "\n".join(lines)


def _probe_difference(pair: dict, probe: str) -> float | None:
    if probe in pair.get("by_probe", {}):
        return pair["by_probe"][probe]["difference"]
    return pair["difference"] if pair.get("probe") == probe else None


def _seeds_cell(c: dict) -> str:
    interval = f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
    return f"{c['mean']:+.3f} {interval}, p = {c['p_value']:.2f}, seed sd {c['sd']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queue", help="queue the grid as DVC experiments")
    q.add_argument("names", nargs="*", help=f"subset of: {', '.join(GRID)}")
    q.add_argument("--start", action="store_true", help="then `dvc queue start -j 1`")
    q.add_argument(
        "--seeds", type=int, default=0,
        help="queue each as <name>-seed0..K-1 (adversarial.seed = k); the table adds a row "
        "across the seeds",
    )  # fmt: skip
    t = sub.add_parser("table", help="markdown table from `dvc exp show --json`")
    t.add_argument("--json", help="read this file instead of running dvc exp show")
    t.add_argument(
        "--all-commits",
        action="store_true",
        help="experiments of every commit (queued from an older HEAD), not only HEAD's",
    )
    args = parser.parse_args()
    if args.command == "queue":
        unknown = [n for n in args.names if n not in GRID]
        if unknown:
            sys.exit(f"unknown ablation(s) {', '.join(unknown)}; choose from {', '.join(GRID)}")
        if args.seeds == 1 or args.seeds < 0:
            sys.exit(f"--seeds {args.seeds}: give 0 (one run each) or at least 2")
        queue(args.names or list(GRID), args.start, args.seeds)
        return
    if args.json:
        with open(args.json) as handle:
            show = json.load(handle)
    else:
        command = [DVC, "exp", "show", "--json"] + (["--all-commits"] if args.all_commits else [])
        show = json.loads(
            subprocess.run(command, env=ENV, check=True, capture_output=True, text=True).stdout
        )
    if args.all_commits or args.json:
        show = _experiments_only(show)
    print(table(show))


if __name__ == "__main__":
    main()
