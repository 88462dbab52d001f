"""Import throughput: the parallel `import` stage against one process, same files, same run.

    python benchmarks/import_throughput.py [--limit N] [--workers W]

Converts the built-in Bach corpus (music21 scores -> MIDI) twice with the conversion cache
off: once with one process (the reference), once with W processes (default: every core).
Prints both times and the speed-up ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from cadenza.config import ImportSettings
from cadenza.paths import Paths
from cadenza.stages import import_corpus as corpus_import


def timed_import(limit: int, workers: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        paths = Paths(root=Path(tmp), corpus="bach")
        settings = ImportSettings(limit=limit, num_workers=workers)
        started = time.perf_counter()
        result = corpus_import.run(settings, paths, use_cache=False)
        return time.perf_counter() - started, result.num_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="files to import (0 = all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    serial_s, num_files = timed_import(args.limit, 1)
    parallel_s, _ = timed_import(args.limit, args.workers)
    print(f"files:                 {num_files}")
    print(f"1 process (reference): {serial_s:7.1f} s  {num_files / serial_s:6.2f} files/s")
    label = f"{args.workers} processes:"
    print(f"{label:<22} {parallel_s:7.1f} s  {num_files / parallel_s:6.2f} files/s")
    print(f"speed-up ratio:        {serial_s / parallel_s:.2f}x")


if __name__ == "__main__":
    main()
