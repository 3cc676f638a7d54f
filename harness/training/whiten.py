"""Patch-whitening initialisation of a model's first convolution (`model.whiten=true`).

The first conv sees k x k x 3 patches of the normalised image. Their (uncentred) covariance C = E[p pᵀ]
has eigenvectors V and eigenvalues λ; filters v_i / sqrt(λ_i + eps) map a patch to coordinates whose
covariance is diag(λ / (λ + eps)), the identity for every direction well above eps. So the network starts
from decorrelated, unit-variance inputs instead of highly correlated neighbouring pixels (Page 2018, "How
to train your ResNet"; Jordan 2024, arXiv 2404.00498: airbench's 2x2 whitening layer, 24 = 2 x 12
filters, each eigenvector and its negative so that the GELU after it passes both signs).

How this generalises to any model: the first `nn.Conv2d` with 3 input channels is whitened; its filter
j is ±eigenvector (j mod d) (d = 3k², largest eigenvalue first, + for the first d filters, - for the
next d, and so on), so a conv with fewer than d filters keeps the d' highest-variance directions. The
weights are then frozen (harness/training/freeze.py, as airbench): they are a fixed change of coordinates,
and a whitened filter trained at the body's lr would quickly lose its scale. The bias is left as it is; with
model.whiten_bias_epochs it trains for those first epochs only (`bias_step_limit`, the optimiser's step
limit).

Deterministic on every rank: the covariance comes from the first `n_images` training images on the CPU
in float64, so every process writes the same filters (DDP also broadcasts them).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from harness.data.loaders import normalise
from harness.errors import UserError
from harness.training.freeze import freeze


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first `nn.Conv2d` (in module order) that reads the 3-channel image."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == 3 and m.groups == 1:
            return m
    raise UserError(f"model.whiten=true: {type(model).__name__} has no nn.Conv2d with 3 input channels to "
                    f"whiten; set model.whiten=false for this model")


def patch_covariance(images_nchw: torch.Tensor, kernel: tuple[int, int], chunk: int = 500) -> torch.Tensor:
    """E[p pᵀ] over every k x k patch (stride 1, no padding) of the normalised images: (d, d) float64,
    d = channels x k x k, flattened in the conv weight's (c, kh, kw) order. Chunked: 5,000 images of
    2x2 patches are 58M numbers at once otherwise."""
    kh, kw = kernel
    c = images_nchw.shape[1]
    d = c * kh * kw
    acc, count = torch.zeros(d, d, dtype=torch.float64), 0
    for part in images_nchw.split(chunk):
        p = part.double().unfold(2, kh, 1).unfold(3, kw, 1)  # (n, c, H', W', kh, kw)
        p = p.permute(0, 2, 3, 1, 4, 5).reshape(-1, d)  # one row per patch, (c, kh, kw) order
        acc += p.T @ p
        count += len(p)
    return acc / count


def whitening_filters(cov: torch.Tensor, out_channels: int, kernel: tuple[int, int], channels: int = 3,
                      eps: float = 5e-4) -> torch.Tensor:
    """(out_channels, channels, kh, kw) filters: ±eigenvectors / sqrt(eigenvalue + eps), largest first."""
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    scaled = (eigenvectors / torch.sqrt(eigenvalues.clamp(min=0) + eps)).T  # row i: filter i
    d = len(eigenvalues)
    rows = [scaled[j % d] * (1 if (j // d) % 2 == 0 else -1) for j in range(out_channels)]
    return torch.stack(rows).reshape(out_channels, channels, *kernel)


@torch.no_grad()
def init_whitening(model: nn.Module, images_nhwc: np.ndarray | torch.Tensor, eps: float = 5e-4,
                   n_images: int = 5000) -> nn.Conv2d:
    """Whiten `model`'s first conv from the first `n_images` uint8 NHWC training images and freeze its
    weights; returns the conv."""
    conv = first_conv(model)
    if len(images_nhwc) == 0:
        raise UserError("model.whiten=true needs training images; the training split is empty")
    kernel = tuple(conv.kernel_size)
    cov = patch_covariance(normalise(images_nhwc[:n_images], torch.float64), kernel)
    w = whitening_filters(cov, conv.out_channels, kernel, conv.in_channels, eps)
    conv.weight.copy_(w.to(conv.weight.dtype))
    freeze([conv.weight])
    return conv


def bias_step_limit(conv: nn.Conv2d | None, epochs: float, steps_per_epoch: int) -> list[tuple[nn.Parameter, int]]:
    """model.whiten_bias_epochs as the optimiser's step limit: [(the whitened conv's bias, its last step)],
    or [] when there is no whitened conv, no bias or no limit (airbench trains it for 3 epochs)."""
    if conv is None or conv.bias is None or epochs <= 0:
        return []
    return [(conv.bias, max(1, round(epochs * steps_per_epoch)))]
