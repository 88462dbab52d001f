"""Count-based baselines on the same tokens: a unigram model and an interpolated
Witten-Bell n-gram model. numpy only; n-gram keys are packed into int64 (base V)."""

from __future__ import annotations

import numpy as np


def unigram_nll(train: np.ndarray, test: np.ndarray, vocab_size: int) -> float:
    """Mean NLL (nats) of test[1:] under add-one smoothed unigram frequencies of train."""
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=vocab_size) + 1.0
    log_probs = np.log(counts / counts.sum())
    return float(-log_probs[np.asarray(test[1:], dtype=np.int64)].mean())


def _keys(tokens: np.ndarray, start: int, length: int, vocab_size: int) -> np.ndarray:
    """Pack tokens[i : i+length] for i >= start into int64 keys, one per position."""
    n = len(tokens)
    key = np.zeros(n - start - length + 1 if length else n - start, dtype=np.int64)
    for j in range(length):
        key = key * vocab_size + tokens[start + j : n - length + 1 + j]
    return key


class NGramModel:
    """Interpolated Witten-Bell smoothing of order n:

    P(w | h) = (c(h, w) + N1+(h .) * P(w | h')) / (c(h) + N1+(h .)),  h' = h without its
    oldest token, down to an add-one unigram. Unseen contexts fall back to the lower order.
    """

    def __init__(self, train: np.ndarray, vocab_size: int, order: int = 4) -> None:
        if vocab_size**order >= 2**62:
            raise ValueError(f"vocabulary {vocab_size} too large for packed {order}-gram keys")
        self.order, self.vocab_size = order, vocab_size
        tokens = np.asarray(train, dtype=np.int64)
        counts = np.bincount(tokens, minlength=vocab_size) + 1.0
        self.unigram = counts / counts.sum()
        self.tables = []  # per context length k = 1..order-1
        for k in range(1, order):
            grams, gram_counts = np.unique(_keys(tokens, 0, k + 1, vocab_size), return_counts=True)
            context_of_gram = grams // vocab_size
            contexts, first = np.unique(context_of_gram, return_index=True)
            context_totals = np.add.reduceat(gram_counts, first)
            distinct_followers = np.diff(np.append(first, len(grams)))
            self.tables.append((grams, gram_counts, contexts, context_totals, distinct_followers))

    def nll(self, test: np.ndarray) -> float:
        """Mean NLL (nats) of test[1:], each token given up to order-1 previous tokens."""
        return float(-np.log(self.probabilities(test)).mean())

    def probabilities(self, test: np.ndarray) -> np.ndarray:
        """P(test[t] | up to order-1 previous tokens) for t = 1..len-1."""
        tokens = np.asarray(test, dtype=np.int64)
        targets = tokens[1:]
        probs = self.unigram[targets]
        for k, (grams, gram_counts, contexts, totals, followers) in enumerate(self.tables, start=1):
            # Positions t (predicting tokens[t]) with a full context of length k: t >= k.
            t = np.arange(1, len(tokens))
            has_context = t >= k
            ctx = np.zeros(len(t), dtype=np.int64)
            for j in range(k):
                ctx = ctx * self.vocab_size + tokens[np.maximum(t - k + j, 0)]
            gram = ctx * self.vocab_size + targets
            c_idx = np.searchsorted(contexts, ctx).clip(max=len(contexts) - 1)
            seen = has_context & (contexts[c_idx] == ctx)
            g_idx = np.searchsorted(grams, gram).clip(max=len(grams) - 1)
            c_hw = np.where(grams[g_idx] == gram, gram_counts[g_idx], 0)
            c_h, n_h = totals[c_idx], followers[c_idx]
            interpolated = (c_hw + n_h * probs) / (c_h + n_h)
            probs = np.where(seen, interpolated, probs)
        return probs
