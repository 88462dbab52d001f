"""GAN objectives on discriminator scores (higher = 'real'): non-saturating standard GAN,
relativistic standard GAN (RSGAN), WGAN with gradient penalty, and hinge."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("standard", "rsgan", "wgan-gp", "hinge")


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    if kind == "standard":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "rsgan":
        return F.softplus(-(real - fake)).mean()
    if kind == "wgan-gp":
        return fake.mean() - real.mean()  # the penalty is added by the caller
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    raise ValueError(f"unknown GAN loss {kind!r}; choose one of {', '.join(LOSSES)}")


def generator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    if kind == "standard":  # non-saturating: maximise log D(fake)
        return F.softplus(-fake).mean()
    if kind == "rsgan":
        return F.softplus(-(fake - real)).mean()
    if kind in ("wgan-gp", "hinge"):
        return -fake.mean()
    raise ValueError(f"unknown GAN loss {kind!r}; choose one of {', '.join(LOSSES)}")


def gradient_penalty(
    score_fn, real_one_hot: torch.Tensor, fake_one_hot: torch.Tensor
) -> torch.Tensor:
    """WGAN-GP: (||grad_x D(x)|| - 1)^2 at random interpolates of one-hot sequences (B, T, V).

    The penalty is differentiated twice; fused attention kernels (flash on CPU) have no
    double backward, so this forward pass uses the math kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    alpha = torch.rand(real_one_hot.shape[0], 1, 1, device=real_one_hot.device)
    mixed = (alpha * real_one_hot + (1 - alpha) * fake_one_hot).requires_grad_(True)
    with sdpa_kernel([SDPBackend.MATH]):
        (grad,) = torch.autograd.grad(score_fn(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
