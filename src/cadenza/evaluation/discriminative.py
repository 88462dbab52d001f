"""Learned features for the discriminative metric (Muhamed et al., 2021): the frozen
SpanBERT-pretrained encoder's states of a window, mean- and max-pooled. The probes that read
them are in probes.py."""

from __future__ import annotations

import numpy as np
import torch


def encoder_features(discriminator, chunks: np.ndarray, device, batch_size: int = 64):
    """(N, T) token windows -> (N, 2C) mean- and max-pooled frozen encodings. Windows longer
    than the encoder's max_len are read in consecutive pieces of max_len (the last one
    shorter), pooled over every position of the window."""
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
