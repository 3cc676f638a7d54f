"""Muon (Jordan 2024): orthogonalised Nesterov momentum for the conv filters, Nesterov SGD for the rest.

What this module owns: `orthogonalize` (the Newton-Schulz iteration) and the `Muon` optimiser that
`harness.training.optim.build_optimizer` returns for optim.name=muon (the speed recipe, docs/speed.md).

Why not a per-parameter loop: the first version stepped every tensor on its own (some 350 small ops per
airnet step, the Newton-Schulz iteration eager, the 1-D tensors through the same loop), 1.5-3.5 ms of
host time against a 3-5 ms forward and backward at batch 2000 on an H100-class GPU: the step was
host-bound. This one issues a few calls per step whatever the model's size:
  * momentum and the Nesterov direction for the filters: `torch._foreach_*` over the group;
  * the filters' rescaling to norm sqrt(out_channels): one `_foreach_norm` and one `_foreach_mul_`;
  * Newton-Schulz once per filter *shape* on the stacked (B, out, fan_in) batch (airnet's 6 trained
    filter banks have 4 shapes), compiled with torch.compile on a GPU (`dynamic=True`: one graph for every
    shape, plus one for single-matrix batches, since dynamo specialises a size of 1);
  * the other groups: torch's own SGD update (`torch.optim.sgd.sgd`, fused where the device has the
    kernel, else foreach), i.e. exactly torch.optim.SGD with dampening 0.
The learning rate never enters a compiled function (the update `p -= lr x d` is a foreach call), so the
schedule changing it every step never recompiles. tests/test_speed.py checks this step against the
per-parameter loop it replaced; tests/test_recompile.py that nothing recompiles across epochs.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
from torch.optim.sgd import sgd as sgd_update

# the quintic's coefficients: they maximise the slope at zero, so three steps bring every singular value
# into roughly [0.5, 1.5] rather than exactly 1, which trains as well (Jordan 2024)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 3


def newton_schulz(x: torch.Tensor, steps: int = NS_STEPS, eps: float = 1e-7) -> torch.Tensor:
    """The iteration on a batch of wide matrices x (B, m, n), m <= n, in bf16: each divided by its own
    Frobenius norm (top singular value at most 1), then `steps` quintic steps. Returns bf16."""
    a, b, c = NS_COEFFICIENTS
    x = x.bfloat16()
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = x @ x.mT
        x = a * x + (b * A + c * A @ A) @ x
    return x


_COMPILED: dict[str, Callable] = {}


def compiled_newton_schulz(backend: str = "inductor") -> Callable:
    """`newton_schulz` under torch.compile (one wrapper per backend, made once per process): dynamic
    shapes, so filter banks of every shape share a graph, and repeats of a run reuse it."""
    if backend not in _COMPILED:
        _COMPILED[backend] = torch.compile(newton_schulz, dynamic=True, backend=backend)
    return _COMPILED[backend]


def orthogonalize(g: torch.Tensor, steps: int = NS_STEPS, eps: float = 1e-7,
                  iteration: Callable = newton_schulz) -> torch.Tensor:
    """Approximately U Vᵀ of the matrix g = U S Vᵀ (2-D), or of each matrix of a batch (B, rows, cols),
    by a quintic Newton-Schulz iteration in bf16; returned in g's dtype. A tall matrix is iterated
    transposed (the smaller Gram matrix), outside `iteration`, so a compiled one sees wide ones only, and
    contiguous ones only (a transposed view's strides would be a graph of their own)."""
    x = g.unsqueeze(0) if g.ndim == 2 else g
    tall = x.shape[-2] > x.shape[-1]
    x = iteration(x.mT.contiguous() if tall else x, steps, eps)
    x = (x.mT if tall else x).to(g.dtype)
    return x[0] if g.ndim == 2 else x


class Muon(torch.optim.Optimizer):
    """Groups with `orthogonalize=True` (the 4-D conv filters): Nesterov momentum, then the update is the
    momentum's flattened (out, in x kh x kw) matrix orthogonalised, at a size set by the lr alone; each
    filter bank is first rescaled to norm sqrt(out_channels) (BatchNorm follows, so only its direction
    counts, and a fixed norm keeps the effective step fixed). Other groups: SGD with (Nesterov) momentum
    and coupled weight decay, exactly as torch.optim.SGD with dampening 0.

    `compile`: the Newton-Schulz iteration under torch.compile. "auto": on a CUDA device (inductor; a
    few seconds, once per process), eager elsewhere (inductor's CPU compile costs more than it saves in a
    CPU run); True/False; or a dynamo backend's name ("eager", "aot_eager": the tests use them to count
    recompilations without paying for code generation)."""

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0, compile: bool | str = "auto"):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      orthogonalize=False))
        self.compile = compile
        self._sqrt_out: dict = {}  # sqrt(out_channels) of each filter group, on its device: made once

    def _backend(self, device: torch.device) -> str | None:
        """The dynamo backend that compiles the iteration on `device`, None for eager."""
        return {True: "inductor", False: None, "auto": "inductor" if device.type == "cuda" else None}.get(
            self.compile, self.compile)

    def _orthogonalize(self, x: torch.Tensor) -> torch.Tensor:
        """orthogonalize(x), compiled when asked; a compiler that fails (a backend missing from this
        machine's torch, an inductor error) costs one warning line, not the run: the same iteration then
        runs eager."""
        backend = self._backend(x.device)
        if not backend:
            return orthogonalize(x)
        try:
            return orthogonalize(x, iteration=compiled_newton_schulz(backend))
        except Exception as e:  # noqa: BLE001 - any compiler failure; the eager iteration is the same maths
            warnings.warn(f"Muon: compiling the Newton-Schulz iteration failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); it runs eager from here on", stacklevel=2)
            self.compile = False
            return orthogonalize(x)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._filters if group["orthogonalize"] else self._sgd)(group, params)
        return loss

    def _sgd(self, group: dict, params: list) -> None:
        """torch's SGD update, in at most two calls: tensors that have a momentum buffer, and those
        taking their first step (torch's fused kernel wants all or none of the buffers)."""
        fused = params[0].device.type in fused_devices()
        has = [p for p in params if "momentum_buffer" in self.state[p]]
        new = [p for p in params if "momentum_buffer" not in self.state[p]]
        for ps in (has, new):
            if not ps:
                continue
            bufs = [self.state[p].get("momentum_buffer") for p in ps]
            sgd_update(ps, [p.grad for p in ps], bufs, foreach=not fused, fused=fused,
                       weight_decay=group["weight_decay"], momentum=group["momentum"], lr=group["lr"],
                       dampening=0.0, nesterov=group["nesterov"], maximize=False)
            for p, b in zip(ps, bufs):
                if b is not None:  # momentum 0 keeps no buffer
                    self.state[p]["momentum_buffer"] = b

    def _filters(self, group: dict, params: list) -> None:
        m, lr = group["momentum"], group["lr"]
        grads = [p.grad for p in params]
        old = [(p.grad, self.state[p]["momentum_buffer"]) for p in params if "momentum_buffer" in self.state[p]]
        if old:  # buf <- m buf + g
            g_old, b_old = map(list, zip(*old))
            torch._foreach_mul_(b_old, m)
            torch._foreach_add_(b_old, g_old)
        for p in params:
            if "momentum_buffer" not in self.state[p]:  # the first step: buf = g
                self.state[p]["momentum_buffer"] = p.grad.clone()
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        d = torch._foreach_add(grads, bufs, alpha=m) if group["nesterov"] else bufs

        # each filter bank to norm sqrt(out_channels): p <- p x sqrt(out) / (|p| + 1e-12)
        key = (params[0].device, tuple(p.shape[0] for p in params))
        if key not in self._sqrt_out:
            self._sqrt_out[key] = torch.tensor([math.sqrt(p.shape[0]) for p in params], device=params[0].device,
                                               dtype=params[0].dtype)
        norms = torch.stack(torch._foreach_norm(params)).to(params[0].dtype)
        torch._foreach_mul_(params, (self._sqrt_out[key] / (norms + 1e-12)).unbind(0))

        # orthogonalise once per shape, on the stacked (B, out, fan_in) batch
        by_shape: dict[torch.Size, list[int]] = {}
        for i, p in enumerate(params):
            by_shape.setdefault(p.shape, []).append(i)
        updates = [None] * len(params)
        for shape, idx in by_shape.items():
            o = self._orthogonalize(torch.stack([d[i].reshape(shape[0], -1) for i in idx]))
            for k, i in enumerate(idx):
                updates[i] = o[k].view(shape)
        torch._foreach_add_(params, updates, alpha=-lr)


def fused_devices() -> list[str]:
    """Device types with torch's fused optimiser kernels (SGD, AdamW): build_optimizer's and Muon's test."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        return _get_fused_kernels_supported_devices()
    except ImportError:
        return []
