"""The model registry: name -> factory, plus the facts the model table and benchmarks report
(parameter count, forward FLOPs, seed source).

A factory is a plain function `def name(num_classes: int = 10, **kw) -> nn.Module` decorated with
`@register_model(source="...")`; its function name is the registry name. A factory registered with
`drop_path=True` takes `drop_path` (stochastic depth, `layers.stochastic_depth`); `create_model` passes
it there and refuses a positive rate for any other model, naming the ones that have it.

Two more kinds of name reach models that live outside this package, with no edit here (train, bench and
sweeps all build through `create_model`):
  `my_pkg.my_module:build`  any importable callable taking `num_classes` (a function or a class); the
                            module is found on sys.path (PYTHONPATH, an installed package, or the current
                            directory)
  `timm/<name>`             a timm model, randomly initialised (`pip install -e '.[timm]'`)
Their models pass the check the zoo's tests apply to every registered model: an nn.Module that maps a
(2, 3, 32, 32) batch to (2, num_classes) logits. A name that cannot be used raises `UnknownModelError`
naming the fix.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from harness.errors import UserError

Factory = Callable[..., nn.Module]


class UnknownModelError(UserError, ValueError):
    """`create_model` was given a name it cannot build: no factory registered under it, or a user or timm
    model that cannot be imported or fails the checks."""


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    source: str
    external: bool = False  # a user or timm model: every model it builds is checked
    drop_path: bool = False  # the factory takes drop_path= (stochastic depth)


_REGISTRY: dict[str, _Entry] = {}


def register_model(fn: Factory | None = None, *, source: str, drop_path: bool = False) -> Any:
    """Register `fn` under its function name; `source` names the seed it was rebuilt from; `drop_path`:
    the factory takes a stochastic depth rate `drop_path=`.

    Usable as `@register_model(source="001 ResNet18")` or `register_model(fn, source=...)`.
    """
    if not isinstance(source, str) or not source.strip():
        raise ValueError("register_model needs a non-empty source=... naming the seed")

    def decorate(f: Factory) -> Factory:
        name = f.__name__
        if name in _REGISTRY and _REGISTRY[name].factory is not f:
            raise ValueError(f"model {name!r} is already registered "
                             f"(by {_REGISTRY[name].factory.__module__})")
        _REGISTRY[name] = _Entry(f, source, drop_path=drop_path)
        return f

    return decorate(fn) if fn is not None else decorate


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by an fnmatch glob such as 'resnet*'."""
    names = sorted(_REGISTRY)
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def drop_path_models() -> list[str]:
    """Sorted names of the models that take a stochastic depth rate (`create_model(..., drop_path=)`)."""
    return [name for name, entry in sorted(_REGISTRY.items()) if entry.drop_path]


def _entry(name: str) -> _Entry:
    if name.startswith("timm/") or ":" in name:
        return _external(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=5)
        hint = f"closest: {', '.join(close)}" if close else "no similar names"
        raise UnknownModelError(
            f"unknown model {name!r} ({hint}); list_models() or `python -m harness.models` "
            f"shows all {len(_REGISTRY)} models"
        ) from None


def create_model(name: str, num_classes: int = 10, drop_path: float | None = None, **kw: Any) -> nn.Module:
    """Build a fresh, randomly initialised model by registry name, `module:callable` or `timm/<name>`.
    `drop_path`: the stochastic depth rate at the last block (None: the model's own default, which is
    off except efficientnet_b0's 0.2); only for the models registered with it, and a rate in [0, 1)."""
    entry = _entry(name)
    if drop_path is not None:
        if not 0.0 <= drop_path < 1.0:
            raise UserError(f"model.drop_path={drop_path}: a drop rate in [0, 1), e.g. 0.1 (0: off)")
        if entry.drop_path:
            kw["drop_path"] = drop_path
        elif drop_path > 0:
            raise UserError(f"model.drop_path={drop_path}: {name} has no stochastic depth (the models that have "
                            f"it: {', '.join(drop_path_models())}); leave model.drop_path unset for {name}")
    model = entry.factory(num_classes=num_classes, **kw)
    if entry.external:
        check_model(model, name, num_classes)
    return model


# ----------------------------------------------------------------------------------------------------
# models from outside the zoo


@functools.lru_cache(maxsize=None)
def _external(name: str) -> _Entry:
    """Resolve a user or timm name once and check one model built from it (on the meta device: shapes
    only, so even a large model costs no memory), so that a mistake surfaces when the config is checked,
    before a run directory is written."""
    entry = _timm_entry(name) if name.startswith("timm/") else _import_entry(name)
    try:
        with torch.device("meta"):
            check_model(entry.factory(num_classes=10), name, 10)
        return entry
    except UnknownModelError:
        raise
    except Exception:  # e.g. an op without a meta kernel: build and check it on the CPU, where errors are real
        pass
    try:
        model = entry.factory(num_classes=10)
    except Exception as e:
        raise UnknownModelError(f"{name}(num_classes=10) failed: {type(e).__name__}: {e}. The callable must take "
                                f"num_classes and return an nn.Module") from None
    check_model(model, name, 10)
    return entry


def _import_entry(name: str) -> _Entry:
    module_name, _, attr = name.partition(":")
    if not module_name or not attr or not all(p.isidentifier() for p in (*module_name.split("."), *attr.split("."))):
        raise UnknownModelError(f"{name!r} is not of the form package.module:callable (e.g. my_models.nets:build)")
    try:
        module = _import(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise UnknownModelError(
                f"{name}: no module named {e.name!r} on the Python path. Run from the folder that holds it, "
                f"add that folder to PYTHONPATH, or pip install the package; `python -c 'import {module_name}'` "
                f"must work") from None
        raise UnknownModelError(f"{name}: importing {module_name} failed: it imports {e.name!r}, which is not "
                                f"installed") from None
    except Exception as e:  # the user's module raised while importing: show what, not a traceback of ours
        raise UnknownModelError(f"{name}: importing {module_name} failed: {type(e).__name__}: {e}") from None
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
            close = difflib.get_close_matches(part, public, n=3)
            raise UnknownModelError(
                f"{name}: {module_name} ({getattr(module, '__file__', '?')}) has no attribute {attr!r}"
                + (f"; did you mean {', '.join(close)}?" if close
                   else f"; its callables: {', '.join(public) or 'none'}"))
        fn = getattr(fn, part)
    if not callable(fn):
        raise UnknownModelError(f"{name}: {attr} is a value of type {type(fn).__name__}, not a callable; name a "
                                f"function or class that takes num_classes and returns an nn.Module")
    return _Entry(lambda num_classes=10, **kw: fn(num_classes=num_classes, **kw), f"{name} (user model)", True)


def _import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError:
        # `python -m harness.train` has the current directory on sys.path, `accelerate launch
        # harness/train.py` has harness/ instead: look in the current directory in both cases
        if os.getcwd() in sys.path:
            raise
        sys.path.append(os.getcwd())
        return importlib.import_module(module_name)


def _timm_entry(name: str) -> _Entry:
    arch = name.removeprefix("timm/")
    try:
        import timm
    except ImportError:
        raise UnknownModelError(f"{name} needs timm, which is not installed: pip install -e '.[timm]' "
                                f"(or pip install timm)") from None
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5)
        raise UnknownModelError(f"{name}: timm {timm.__version__} has no model {arch!r}"
                                + (f" (closest: {', '.join('timm/' + c for c in close)})" if close else "")
                                + "; timm.list_models('pattern*') lists them")
    # random initialisation, as the zoo's models: pretrained=True would download ImageNet weights
    factory = functools.partial(timm.create_model, arch, pretrained=False)
    return _Entry(lambda num_classes=10, **kw: factory(num_classes=num_classes, **kw), f"timm {timm.__version__}",
                  True)


def check_model(model: Any, name: str, num_classes: int) -> None:
    """What every model must do here: be an nn.Module that maps a (2, 3, 32, 32) batch to (2, num_classes)
    logits. Run in eval mode under no_grad (BatchNorm statistics stay untouched); the mode is restored."""
    if not isinstance(model, nn.Module):
        raise UnknownModelError(f"{name} returned a value of type {type(model).__name__}, not a torch.nn.Module; "
                                f"the callable must build and return the model")
    try:
        p = next(model.parameters())
        device, dtype = p.device, p.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, 3, 32, 32, device=device, dtype=dtype))
    except Exception as e:
        if device.type == "meta":  # checked again on the CPU, where the error is the real one
            raise RuntimeError(str(e)) from e
        raise UnknownModelError(f"{name} fails on a batch of two 3x32x32 CIFAR images: {type(e).__name__}: "
                                f"{e}") from None
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, num_classes):
        raise UnknownModelError(f"{name} maps a (2, 3, 32, 32) batch to {shape}, not the (2, {num_classes}) "
                                f"logits expected; build the classifier with the num_classes it is given "
                                f"({num_classes}) and return logits as one tensor")


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
