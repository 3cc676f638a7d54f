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

On the device, timed (airbench94_muon computes it on the GPU inside its timed region): the first
`n_images` training images are copied to the model's device (5,000 images are 15 MB: of the order of a
millisecond over PCIe, an estimate, not a measurement; airbench's images are resident already, so if
anything our clock is the slower), and the patch covariance and its eigendecomposition are computed
there in float64 (5,000 images give 4.8M patches of 12 numbers, about 0.7 GFLOP; float64 keeps the
result the CPU's to rounding, where airbench uses float32). train.py times it into summary.json's
time_s, and `init_whitening` waits for the device before returning, so the clock holds the work.
tests/test_evaluation.py checks the filters against a float64 NumPy computation on the host, on the CPU
and, where there is one, on a GPU.

Deterministic on every rank: every rank computes the filters from the same images with the same
arithmetic, and each eigenvector's sign is fixed by a convention (its largest entry positive) rather
than left to the solver (LAPACK on the CPU and cuSOLVER on a GPU may return either sign); DDP then
broadcasts rank 0's weights at `accelerator.prepare`, so the ranks hold identical filters even if a
library were to differ between them.
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
    """E[p pᵀ] over every k x k patch (stride 1, no padding) of the normalised images: (d, d) float64 on
    the images' device, d = channels x k x k, flattened in the conv weight's (c, kh, kw) order. Chunked:
    5,000 images of 2x2 patches are 58M numbers at once otherwise."""
    kh, kw = kernel
    c = images_nchw.shape[1]
    d = c * kh * kw
    acc, count = torch.zeros(d, d, dtype=torch.float64, device=images_nchw.device), 0
    for part in images_nchw.split(chunk):
        p = part.double().unfold(2, kh, 1).unfold(3, kw, 1)  # (n, c, H', W', kh, kw)
        p = p.permute(0, 2, 3, 1, 4, 5).reshape(-1, d)  # one row per patch, (c, kh, kw) order
        acc += p.T @ p
        count += len(p)
    return acc / count


def whitening_filters(cov: torch.Tensor, out_channels: int, kernel: tuple[int, int], channels: int = 3,
                      eps: float = 5e-4) -> torch.Tensor:
    """(out_channels, channels, kh, kw) filters: ±eigenvectors / sqrt(eigenvalue + eps), largest first,
    each eigenvector signed so that its largest-magnitude entry is positive (the module docstring)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    largest = eigenvectors.gather(0, eigenvectors.abs().argmax(0, keepdim=True))  # (1, d)
    eigenvectors = eigenvectors * torch.where(largest < 0, -1.0, 1.0).to(eigenvectors.dtype)
    scaled = (eigenvectors / torch.sqrt(eigenvalues.clamp(min=0) + eps)).T  # row i: filter i
    d = len(eigenvalues)
    rows = [scaled[j % d] * (1 if (j // d) % 2 == 0 else -1) for j in range(out_channels)]
    return torch.stack(rows).reshape(out_channels, channels, *kernel)


@torch.no_grad()
def init_whitening(model: nn.Module, images_nhwc: np.ndarray | torch.Tensor, eps: float = 5e-4,
                   n_images: int = 5000) -> nn.Conv2d:
    """Whiten `model`'s first conv from the first `n_images` uint8 NHWC training images, computed on the
    conv's device, and freeze its weights; returns the conv once the device has finished (a clock around
    the call holds the whole computation)."""
    conv = first_conv(model)
    if len(images_nhwc) == 0:
        raise UserError("model.whiten=true needs training images; the training split is empty")
    kernel = tuple(conv.kernel_size)
    device = conv.weight.device
    first = images_nhwc[:n_images]
    images = (first if isinstance(first, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(first))).to(device)
    cov = patch_covariance(normalise(images, torch.float64), kernel)
    w = whitening_filters(cov, conv.out_channels, kernel, conv.in_channels, eps)
    conv.weight.copy_(w.to(conv.weight.dtype))
    freeze([conv.weight])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return conv


def bias_step_limit(conv: nn.Conv2d | None, epochs: float, steps_per_epoch: int) -> list[tuple[nn.Parameter, int]]:
    """model.whiten_bias_epochs as the optimiser's step limit: [(the whitened conv's bias, its last step)],
    or [] when there is no whitened conv, no bias or no limit (airbench trains it for 3 epochs)."""
    if conv is None or conv.bias is None or epochs <= 0:
        return []
    return [(conv.bias, max(1, round(epochs * steps_per_epoch)))]
