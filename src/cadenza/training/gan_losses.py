"""The GAN objective on discriminator scores (higher = 'real'): the relativistic standard
GAN (RSGAN, Jolicoeur-Martineau 2019). The standard, hinge and WGAN-GP losses measured no
better (docs/LOG.md, "Retired options")."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(D(real) - D(fake)), averaged over pairs of the batch."""
    return F.softplus(-(real - fake)).mean()


def generator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(D(fake) - D(real)): the generator's side of the same comparison."""
    return F.softplus(-(fake - real)).mean()
