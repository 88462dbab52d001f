"""The discriminative metric (Muhamed et al., 2021): can a fresh classifier tell real chunks
from generated ones? Frozen features of the SpanBERT-pretrained encoder (mean and max pooled),
a logistic regression trained and scored by stratified k-fold cross-validation, so every
chunk is scored by a classifier that never saw it. 50% accuracy (AUC 0.5) means the two sets
are indistinguishable to this probe; confidence intervals by bootstrap over the held-out
predictions."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class DiscriminativeResult:
    accuracy: float
    accuracy_ci_low: float
    accuracy_ci_high: float
    auc: float
    auc_ci_low: float
    auc_ci_high: float
    num_real: int
    num_generated: int
    folds: int

    def to_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def encoder_features(discriminator, chunks: np.ndarray, device, batch_size: int = 64):
    """(N, T) token windows -> (N, 2C) mean- and max-pooled frozen encodings. Windows longer
    than the encoder's max_len are read in consecutive pieces of max_len (the last one
    shorter), pooled over every position of the window."""
    import torch

    discriminator.eval()
    chunks = np.asarray(chunks)
    piece = discriminator.config.max_len
    out = []
    with torch.no_grad():
        for start in range(0, len(chunks), batch_size):
            batch = torch.as_tensor(chunks[start : start + batch_size], dtype=torch.long)
            hidden = [
                discriminator.encode(batch[:, s : s + piece].to(device)).float()
                for s in range(0, batch.shape[1], piece)
            ]
            h = torch.cat(hidden, dim=1)  # (B, T, C)
            out.append(torch.cat([h.mean(dim=1), h.amax(dim=1)], dim=-1).cpu().numpy())
    return np.concatenate(out)


def classify(
    real: np.ndarray, fake: np.ndarray, folds: int = 5, bootstrap: int = 1000, seed: int = 0
) -> DiscriminativeResult:
    """Cross-validated real-vs-generated classification of two feature sets."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(real) != len(fake):
        raise ValueError(
            f"need equal numbers of real and generated chunks: {len(real)} vs {len(fake)}"
        )
    folds = min(folds, len(real))
    if folds < 2:
        raise ValueError(f"need at least 2 chunks per class for cross-validation, got {len(real)}")
    x = np.concatenate([real, fake])
    y = np.concatenate([np.ones(len(real)), np.zeros(len(fake))])
    proba = np.zeros(len(y))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train_idx, test_idx in splitter.split(x, y):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        model.fit(x[train_idx], y[train_idx])
        proba[test_idx] = model.predict_proba(x[test_idx])[:, 1]
    correct = (proba >= 0.5) == (y == 1)
    rng = np.random.default_rng(seed)
    accs, aucs = [], []
    for _ in range(bootstrap):
        idx = rng.integers(0, len(y), len(y))
        accs.append(correct[idx].mean())
        if 0 < y[idx].sum() < len(idx):
            aucs.append(roc_auc_score(y[idx], proba[idx]))
    return DiscriminativeResult(
        accuracy=float(correct.mean()),
        accuracy_ci_low=float(np.percentile(accs, 2.5)),
        accuracy_ci_high=float(np.percentile(accs, 97.5)),
        auc=float(roc_auc_score(y, proba)),
        auc_ci_low=float(np.percentile(aucs, 2.5)),
        auc_ci_high=float(np.percentile(aucs, 97.5)),
        num_real=len(real),
        num_generated=len(fake),
        folds=folds,
    )
