"""Scratch vs fine-tuned: test NLL of two generators on the same test documents, paired.

    python benchmarks/transfer_nll.py --tokens data/tokens \
        --scratch models/generator-mle-scratch --fine-tuned models/generator-mle

Each test document is scored on its own (memory reset at its start, every position 1..n-1
once), so documents are the resampling unit: the 95% interval of the relative NLL reduction
comes from a paired bootstrap over documents (token-weighted means in each resample). The
stage's `test_nll` (one stream, memory carried across documents) is printed beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def load(folder: Path):
    from cadenza.models.generator import GeneratorConfig, TransformerXL
    from cadenza.training import checkpoint

    config = checkpoint.read_config(folder)
    model = TransformerXL(GeneratorConfig(**config["model"]))
    checkpoint.load_weights(model, folder)
    return model.eval(), config


def per_document(model, tokens: np.ndarray, offsets: np.ndarray, seg_len: int):
    """(summed NLL, scored tokens) per document."""
    from cadenza.training.pretrain import evaluate_nll

    sums, counts = [], []
    for lo, hi in zip(offsets[:-1], offsets[1:], strict=True):
        doc = np.asarray(tokens[lo:hi])
        if len(doc) < 2:
            continue
        mean = evaluate_nll(model, doc, seg_len, torch.device("cpu"))
        sums.append(mean * (len(doc) - 1))
        counts.append(len(doc) - 1)
    return np.array(sums), np.array(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=Path, required=True, help="tokens folder (test split)")
    parser.add_argument("--scratch", type=Path, required=True)
    parser.add_argument("--fine-tuned", type=Path, required=True)
    parser.add_argument("--bootstrap", type=int, default=10000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from cadenza.tokens.store import load_split

    torch.manual_seed(0)
    tokens, offsets = load_split(args.tokens, "test")
    scores = {}
    for name, folder in (("scratch", args.scratch), ("fine_tuned", args.fine_tuned)):
        model, config = load(folder)
        scores[name] = per_document(model, tokens, offsets, config["model"]["seg_len"])
    (s_sum, count), (f_sum, _) = scores["scratch"], scores["fine_tuned"]
    scratch, fine = s_sum.sum() / count.sum(), f_sum.sum() / count.sum()
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(count), size=(args.bootstrap, len(count)))
    n_tok = count[picks].sum(1)
    rel = 1 - (f_sum[picks].sum(1) / n_tok) / (s_sum[picks].sum(1) / n_tok)
    diff = (s_sum[picks].sum(1) - f_sum[picks].sum(1)) / n_tok
    low, high = np.percentile(rel, [2.5, 97.5])
    d_low, d_high = np.percentile(diff, [2.5, 97.5])
    wins = int(((s_sum / count) > (f_sum / count)).sum())
    result = {
        "num_documents": len(count),
        "num_tokens": int(count.sum()),
        "scratch_nll": scratch,
        "fine_tuned_nll": fine,
        "nll_reduction": scratch - fine,
        "nll_reduction_ci95": [d_low, d_high],
        "relative_reduction": 1 - fine / scratch,
        "relative_reduction_ci95": [low, high],
        "documents_better_fine_tuned": wins,
    }
    print(
        f"test NLL per document (n = {len(count)} documents, {count.sum()} tokens): scratch "
        f"{scratch:.4f}, fine-tuned {fine:.4f} nats/token; reduction {scratch - fine:.4f} "
        f"[{d_low:.4f}, {d_high:.4f}], relative {1 - fine / scratch:.1%} [{low:.1%}, {high:.1%}] "
        f"(95% paired bootstrap over documents, {args.bootstrap} resamples); fine-tuned better "
        f"on {wins}/{len(count)} documents"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
