"""The model registry: name -> factory, plus the facts the model table and benchmarks report
(parameter count, forward FLOPs, seed source).

A factory is a plain function `def name(num_classes: int = 10, **kw) -> nn.Module` decorated with
`@register_model(source="...")`; its function name is the registry name.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from harness.errors import UserError

Factory = Callable[..., nn.Module]


class UnknownModelError(UserError, ValueError):
    """`create_model` was given a name that no factory registered."""


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    source: str


_REGISTRY: dict[str, _Entry] = {}


def register_model(fn: Factory | None = None, *, source: str) -> Any:
    """Register `fn` under its function name; `source` names the seed it was rebuilt from.

    Usable as `@register_model(source="001 ResNet18")` or `register_model(fn, source=...)`.
    """
    if not isinstance(source, str) or not source.strip():
        raise ValueError("register_model needs a non-empty source=... naming the seed")

    def decorate(f: Factory) -> Factory:
        name = f.__name__
        if name in _REGISTRY and _REGISTRY[name].factory is not f:
            raise ValueError(f"model {name!r} is already registered "
                             f"(by {_REGISTRY[name].factory.__module__})")
        _REGISTRY[name] = _Entry(f, source)
        return f

    return decorate(fn) if fn is not None else decorate


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by an fnmatch glob such as 'resnet*'."""
    names = sorted(_REGISTRY)
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=5)
        hint = f"closest: {', '.join(close)}" if close else "no similar names"
        raise UnknownModelError(
            f"unknown model {name!r} ({hint}); list_models() or `python -m harness.models` "
            f"shows all {len(_REGISTRY)} models"
        ) from None


def create_model(name: str, num_classes: int = 10, **kw: Any) -> nn.Module:
    """Build a fresh, randomly initialised model by registry name."""
    return _entry(name).factory(num_classes=num_classes, **kw)


def model_source(name: str) -> str:
    """The seed notebook(s) and class(es) the model was rebuilt from."""
    return _entry(name).source


def count_params(model: nn.Module) -> int:
    """All parameters, trainable or not."""
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> int:
    """Forward FLOPs for one image, counted by `torch.utils.flop_counter.FlopCounterMode`.

    FlopCounterMode counts a multiply-add as 2 FLOPs and only counts matmul/conv-like ops
    (BN, activations, pooling and elementwise ops are not counted). A batch of 2 is run in eval
    mode under no_grad and the total halved; the model's train/eval mode is restored afterwards.
    Works on meta-device models too (shapes only, no arithmetic).
    """
    try:
        p = next(model.parameters())
        device, dtype = p.device, p.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    x = torch.zeros((2, *input_size), device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@functools.lru_cache(maxsize=None)
def _facts(name: str, num_classes: int) -> tuple[int, int]:
    # A meta-device model has every shape but no storage: building and counting it is fast
    # and allocates nothing, even for the 4096-wide VGG heads.
    try:
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes)
        return count_params(model), forward_flops(model)
    except (NotImplementedError, RuntimeError):  # an op with no meta kernel: count on the CPU
        model = create_model(name, num_classes=num_classes)
        return count_params(model), forward_flops(model)


def model_facts(name: str, num_classes: int = 10) -> dict[str, Any]:
    """{'name', 'params', 'gflops' (forward, per 32x32 image, 2 FLOPs per MAC), 'source'}; cached."""
    params, flops = _facts(name, num_classes)
    return {"name": name, "params": params, "gflops": flops / 1e9, "source": model_source(name)}
