"""train.sync_bn: BatchNorm whose batch statistics cover the global batch, not one process's slice.

With N processes each BatchNorm normalises its own B/N images, so a BN model's trajectory depends on N
(and small per-GPU batches give noisy statistics). SyncBatchNorm all-reduces the statistics, so every
process normalises with the global batch's mean and variance: the 1-process trajectory at the same global
batch, up to float reduction order.

On CUDA this is torch's own `nn.SyncBatchNorm` (NCCL, fused kernels). torch's refuses CPU tensors, so on a
CPU process group (gloo: tests, CPU clusters) `GlobalBatchNorm2d` does the same arithmetic with a
differentiable all-reduce of per-channel (count, sum, sum of squares); its equivalence to one process is
what tests/test_train.py checks.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with statistics over all processes of the default group (training mode only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        # torch's functional collective: differentiable (its backward all-reduces the gradient), traceable
        from torch.distributed._functional_collectives import all_reduce

        # two passes (mean, then the mean squared deviation): E[x^2] - E[x]^2 in fp32 cancels badly after
        # ReLUs (measured: 2% apart from one process's BatchNorm after one step of mobilenet_v1)
        xf = x.float()
        c = x.shape[1]
        count = torch.full((1,), float(x.numel() // c), device=x.device)
        first = all_reduce(torch.cat([count, xf.sum((0, 2, 3))]), "sum", dist.group.WORLD)
        n, mean = first[0], first[1:] / first[0]
        centered = xf - mean[None, :, None, None]
        var = all_reduce(centered.square().sum((0, 2, 3)), "sum", dist.group.WORLD) / n  # biased, as BN normalises
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                self.running_var.lerp_((var.detach() * n / (n - 1)).to(self.running_var.dtype), m)
                self.num_batches_tracked += 1
        y = centered * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert(model: nn.Module, cuda: bool) -> nn.Module:
    """Every BatchNorm of `model` made synchronous (torch's SyncBatchNorm on CUDA, ours elsewhere)."""
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, GlobalBatchNorm2d):
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(device=child.weight.device if child.affine else None)
            setattr(model, name, new)
        else:
            convert(child, cuda)
    return model

