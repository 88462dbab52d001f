"""Set-up time: a fresh venv with the package and its dev extras installed by pip (the
reference) and by uv (what `make setup` does after torch), interleaved, in the same run.

    python benchmarks/setup_time.py [--rounds 2]

Each round builds both venvs in a temporary folder from this checkout: torch by pip first
(the Makefile's `TORCH_SPEC`, so the local CPU wheel where there is one), then the rest.
uv's cache is an empty folder per round (a fresh machine); pip keeps whatever cache the
machine has. Both compile bytecode (pip by default, uv with --compile-bytecode, as the
Makefile asks). Prints the seconds of each, their ratio, whether the two venvs hold the same
package versions (`pip freeze`, uv itself left out), and the time to import mlflow in each
(a venv without .pyc files, where PYTHONDONTWRITEBYTECODE is set, imports 2-3x slower).
Needs the network (PyPI).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH_SPEC = "torch==2.13.0"
EXTRAS = ".[dev]"


def run(*command: str | Path, **kwargs) -> None:
    subprocess.run([str(c) for c in command], check=True, capture_output=True, **kwargs)


def build(folder: Path, installer: str) -> tuple[float, set[str]]:
    """(seconds from venv creation to the last package, the venv's frozen requirements)."""
    venv = folder / f"venv-{installer}"
    python = venv / "bin" / "python"
    started = time.perf_counter()
    run(sys.executable, "-m", "venv", venv)
    run(python, "-m", "pip", "install", "--quiet", TORCH_SPEC)
    if installer == "pip":
        run(python, "-m", "pip", "install", "--quiet", "-e", EXTRAS, cwd=ROOT)
        run(python, "-m", "pip", "install", "--quiet", "--no-deps", "tinysoundfont>=0.3.7,<0.4")
    else:
        env = {**os.environ, "UV_CACHE_DIR": str(folder / "uv-cache")}
        run(python, "-m", "pip", "install", "--quiet", "uv>=0.5,<1")
        uv = [venv / "bin" / "uv", "pip", "install", "--quiet", "--compile-bytecode"]
        uv += ["--python", python]
        run(*uv, "-e", EXTRAS, cwd=ROOT, env=env)
        run(*uv, "--no-deps", "tinysoundfont>=0.3.7,<0.4", env=env)
    seconds = time.perf_counter() - started
    frozen = subprocess.run(
        [python, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True
    ).stdout.split()
    return seconds, {line for line in frozen if not line.startswith("uv==")}


def import_seconds(folder: Path, installer: str, module: str = "mlflow") -> float:
    """Best of 3 wall times of a fresh process importing `module` in that venv."""
    python = folder / f"venv-{installer}" / "bin" / "python"
    times = []
    for _ in range(3):
        started = time.perf_counter()
        run(python, "-c", f"import {module}")
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for r in range(args.rounds):
        order = ("pip", "uv") if r % 2 == 0 else ("uv", "pip")
        with tempfile.TemporaryDirectory(prefix="cadenza-setup-") as tmp:
            results = {name: build(Path(tmp), name) for name in order}
            imports = {name: import_seconds(Path(tmp), name) for name in order}
        (pip_s, pip_set), (uv_s, uv_set) = results["pip"], results["uv"]
        same = "same versions" if pip_set == uv_set else f"differ: {sorted(pip_set ^ uv_set)}"
        print(
            f"round {r + 1} ({' then '.join(order)}): pip {pip_s:.1f} s, uv {uv_s:.1f} s, "
            f"uv / pip {uv_s / pip_s:.2f}; {len(pip_set)} packages, {same}; import mlflow "
            f"pip {imports['pip']:.2f} s, uv {imports['uv']:.2f} s"
        )


if __name__ == "__main__":
    main()
