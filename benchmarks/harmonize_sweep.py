"""Harmonizing a split's sopranos under other samplings, or best-of-K by likelihood, paired.

    python benchmarks/harmonize_sweep.py --model models/generator-mle --split valid \
        --sampling 1.0,1.0 --sampling 1.0,0.9 --sampling 0.8,1.0
    python benchmarks/harmonize_sweep.py --model models/generator-mle --split valid --rerank 4

Run in a pipeline root (reads data/tokens). Each piece's top voice is harmonized by the
model (generate.harmonize_ids) and read against Bach's harmonization at bar 1 and at the
middle bar (256-token windows, as evaluation/tasks.py does) by the music probe, the
strongest, with 100 cluster-bootstrap draws shared by every arm (document = cluster).
`--sampling T,P` (temperature, pitch nucleus) arms run with sampling seeds 0 and 1 and are
paired against the first. `--rerank K` harmonizes with seeds 0..K-1 and keeps, per piece, the
harmonization with the lowest mean NLL per token (and, as a check, the highest), paired
against seed 0 alone.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def sampling_pair(text: str) -> str:
    """'T,P' with T > 0 and P in (0, 1], else an argparse error naming the value."""
    try:
        temperature, pitch_top_p = map(float, text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give T,P, e.g. 1.0,0.9") from None
    if temperature <= 0 or not 0 < pitch_top_p <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: T must be > 0 and P in (0, 1]")
    return text


def main() -> None:
    from cadenza.evaluation import probes, window_stats
    from cadenza.evaluation.tasks import bar_starts, opening_and_middle, task_windows
    from cadenza.generate import clean_ids, harmonize_ids, load_generator
    from cadenza.sampling import Sampling
    from cadenza.tokens.control import control_grammar, voice_skeleton
    from cadenza.tokens.store import load_split
    from cadenza.training.pretrain import evaluate_nll

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/generator-mle"))
    parser.add_argument("--split", default="valid")
    parser.add_argument("--sampling", action="append", default=[], type=sampling_pair,
                        help="T,P: temperature and pitch nucleus")  # fmt: skip
    parser.add_argument("--rerank", type=int, default=0, help="K candidates per soprano")
    args = parser.parse_args()

    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json, not a generator folder")
    if not Path("data/tokens").is_dir():
        parser.error("no data/tokens here: run it in a pipeline root (after `cadenza tokenize`)")
    net, tokenizer = load_generator(args.model)
    net.eval()
    grammar, vocab = control_grammar(tokenizer, "harmonize_sweep")
    tokens, offsets = load_split(Path("data/tokens"), args.split)
    documents = [clean_ids(tokenizer, tokens[a:b].tolist())
                 for a, b in zip(offsets[:-1], offsets[1:], strict=True)]  # fmt: skip
    documents = [d for d in documents if len(bar_starts(grammar, d)) >= 4]
    groups = np.repeat(np.arange(len(documents)), 2)
    bars = opening_and_middle([bar_starts(grammar, d) for d in documents])
    skeletons = [voice_skeleton(grammar, d) for d in documents]
    draws = probes.make_draws(groups, groups, 100, 0)

    def music(rows):
        starts = [bar_starts(grammar, ids) for ids in rows]
        windows = task_windows(rows, starts, bars, 256, vocab.pad)
        return window_stats.features_of_windows(tokenizer, windows)

    real = music(documents)

    def score(name, rows):
        result = probes.score(probes.ProbeInput(real, music(rows), groups, groups), draws, 5, 2, 0)
        low, high = result.interval()
        print(f"{args.split} {name}: music probe {result.accuracy:.3f} [{low:.3f}, {high:.3f}]")
        return result

    def harmonize(sampling, seed):
        started = time.perf_counter()
        with torch.no_grad():
            rows, _ = harmonize_ids(net, tokenizer, skeletons, sampling, seed)
        print(f"  {len(rows)} sopranos in {time.perf_counter() - started:.0f} s", flush=True)
        return rows

    def paired(a, b, label):
        d = probes.paired_difference(a, b)
        print(f"{label}: {d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], "
              f"p = {d['p_value']:.2f}")  # fmt: skip

    scores = {}
    for spec in args.sampling:
        temperature, pitch_top_p = map(float, spec.split(","))
        sampling = Sampling(temperature=temperature, pitch_top_p=pitch_top_p)
        for seed in (0, 1):
            scores[spec, seed] = score(f"{sampling.name} seed {seed}", harmonize(sampling, seed))
    for spec in args.sampling[1:]:
        for seed in (0, 1):
            paired(scores[spec, seed], scores[args.sampling[0], seed],
                   f"{spec} - {args.sampling[0]}, seed {seed}")  # fmt: skip

    if args.rerank:
        bos, seg_len = tokenizer["BOS_None"], net.config.seg_len
        candidates, nll = [], []
        for seed in range(args.rerank):
            rows = harmonize(Sampling(), seed)
            with torch.no_grad():
                nll.append([evaluate_nll(net, np.array([bos, *r]), seg_len, torch.device("cpu"))
                            for r in rows])  # fmt: skip
            candidates.append(rows)
        nll = np.array(nll)

        def pick(index):
            return [candidates[k][i] for i, k in enumerate(index)]

        single = score("seed 0", candidates[0])
        best = score(f"best of {args.rerank} by likelihood", pick(nll.argmin(0)))
        worst = score(f"worst of {args.rerank} by likelihood", pick(nll.argmax(0)))
        paired(best, single, "best - seed 0")
        paired(worst, single, "worst - seed 0")


if __name__ == "__main__":
    main()
