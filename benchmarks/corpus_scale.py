"""How the data stages scale with the corpus: files/s and peak RSS of import, validate, split,
tokenize and the training batch reader, at growing corpus sizes.

    python benchmarks/corpus_scale.py --pool data/raw/music21-mix --sizes 1000 5000 20000

Each size is a synthetic corpus of N MIDI files written into a folder: the pool's files
(default: a fresh import of a sample of the music21 mix) cycled, each copy transposed by a
different number of semitones so every file is distinct (no duplicates for validate to fold).
Each stage runs in its own process with one worker, so its peak RSS is its own. The reference
is the smallest size, measured in the same run: "time/file x" is seconds per file relative to
it (1.0 = linear), "RSS x" the peak RSS relative to it (1.0 = flat).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

STAGE_CODE = r"""
import json, resource, sys, time
from pathlib import Path
from cadenza.config import parse_settings
from cadenza.paths import Paths

root, stage, batches = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
settings = parse_settings(json.loads((root / "params.json").read_text()))
paths = Paths(root=root, corpus="scale")
started = time.perf_counter()
if stage == "import":
    from cadenza.stages import import_corpus as corpus_import
    corpus_import.run(settings.import_, paths, use_cache=False)
elif stage == "validate":
    from cadenza.stages import validate as validate_stage
    validate_stage.run(settings.validate_, paths)
elif stage == "split":
    from cadenza.stages import split
    split.run(settings.split, paths)
elif stage == "tokenize":
    from cadenza.stages import tokenize as tokenize_stage
    tokenize_stage.run(settings.tokenize, paths)
elif stage == "train_batches":
    from cadenza.tokens.store import load_split
    from cadenza.training.data import SegmentBatches
    tokens, offsets = load_split(paths.tokens_dir, "train")
    reader = SegmentBatches(tokens, offsets, batch_size=16, seg_len=128, seed=0)
    for step in range(batches):
        reader.batch(step * max(1, reader.batches_per_epoch // batches))
seconds = time.perf_counter() - started
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "max_rss_kb": rss}))
"""
STAGES = ("import", "validate", "split", "tokenize", "train_batches")


def pool_files(pool: Path | None, work: Path, sample: int) -> list[Path]:
    if pool is not None:
        files = sorted(p for p in pool.rglob("*.mid") if p.is_file())
        if not files:
            raise SystemExit(f"{pool}: no .mid files to build corpora from")
        return files
    from cadenza.config import ImportSettings
    from cadenza.paths import Paths
    from cadenza.stages import import_corpus as corpus_import

    settings = ImportSettings(corpus="pool", source="mix", mix_exclude=["bach"], limit=sample)
    corpus_import.run(settings, Paths(root=work, corpus="pool"))
    return sorted((work / "data" / "raw" / "pool").rglob("*.mid"))


def write_corpus(pool: list[Path], folder: Path, size: int) -> None:
    """size distinct files: pool file i % len(pool), transposed by (i // len(pool)) mod 25 - 12
    semitones and with its first note nudged by i // (25 * len(pool)) ticks beyond that."""
    from symusic import Score

    folder.mkdir(parents=True)
    for i in range(size):
        rounds, index = divmod(i, len(pool))
        score = Score(str(pool[index]))
        shift = (rounds % 25) - 12
        if shift:
            score = score.shift_pitch(shift)
        if rounds >= 25:
            score = score.shift_time(rounds // 25)
        score.dump_midi(str(folder / f"{i:06d}.mid"))


def run_stage(root: Path, stage: str, batches: int) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", STAGE_CODE, str(root), stage, str(batches)],
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        raise SystemExit(f"{stage} at {root} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--pool", type=Path, help="folder of MIDI files to build corpora from")
    parser.add_argument("--pool-sample", type=int, default=500, help="without --pool")
    parser.add_argument("--batches", type=int, default=200, help="batches the reader reads")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="corpus-scale-") as tmp:
        work = Path(tmp)
        pool = pool_files(args.pool, work / "pool", args.pool_sample)
        print(f"pool: {len(pool)} files")
        for size in sorted(args.sizes):
            root = work / f"n{size}"
            write_corpus(pool, root / "source", size)
            params = {
                "import": {"corpus": "scale", "source": "folder", "path": str(root / "source"),
                           "num_workers": 1},
                "validate": {"max_bad_fraction": 0.5},
                "tokenize": {"transpositions": [], "time_stretches": [], "num_workers": 1},
            }  # fmt: skip
            (root / "params.json").write_text(json.dumps(params))
            for stage in STAGES:
                result = run_stage(root, stage, args.batches)
                rows.append({"files": size, "stage": stage, **result})
                print(
                    f"{size:>7} files  {stage:<14} {result['seconds']:8.1f} s  "
                    f"{size / result['seconds']:8.1f} files/s  "
                    f"peak RSS {result['max_rss_kb'] / 1024:7.0f} MiB",
                    flush=True,
                )
    smallest = min(args.sizes)
    print(f"\nrelative to {smallest} files (time/file x: 1.0 = linear; RSS x: 1.0 = flat)")
    reference = {r["stage"]: r for r in rows if r["files"] == smallest}
    for row in rows:
        ref = reference[row["stage"]]
        per_file = (row["seconds"] / row["files"]) / (ref["seconds"] / ref["files"])
        if row["stage"] == "train_batches":  # a fixed number of batches: time should be flat
            per_file = row["seconds"] / ref["seconds"]
        rss = row["max_rss_kb"] / ref["max_rss_kb"]
        print(
            f"{row['files']:>7} files  {row['stage']:<14} "
            f"time/file x {per_file:5.2f}  RSS x {rss:5.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
