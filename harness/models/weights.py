"""Plain weights: what leaves a run is the model's own state dict, loadable by `create_model(name)`.

    from harness.models import load_run
    model = load_run("runs/resnet18-20261123-101500")   # EMA weights when the run had EMA, ready for eval
    best = load_run("runs/resnet18-20261123-101500", which="best")   # the best validation epoch's

A finished run writes `model.safetensors` (and `ema.safetensors` with train.ema > 0) into its directory:
the last epoch's weights. With a validation split (data.val_size > 0) it also keeps `best.safetensors`
(and `best_ema.safetensors`), the weights of the epoch with the best validation accuracy so far, rewritten
whenever an epoch beats it (the file's metadata names its epoch, step and validation accuracy). Each
checkpoint folder holds the same canonical `model.safetensors`. Keys never carry the wrappers'
prefixes (`module.` from DDP, `_orig_mod.` from torch.compile): `canonical_state_dict` strips them from
old checkpoints too, so a run resumes across changes of process count and compile setting.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from harness.errors import UserError

_PREFIXES = ("_orig_mod.", "module.")


def canonical_key(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def canonical_state_dict(state: dict) -> dict:
    return {canonical_key(k): v for k, v in state.items()}


def save_weights(module: torch.nn.Module, path: str | Path, **metadata: str) -> Path:
    """The module's state dict as safetensors (contiguous CPU tensors), written atomically and fsync'd;
    `metadata` (e.g. model="resnet18", num_classes="10") is stored in the file's header."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().to("cpu", copy=True).contiguous()
             for k, v in canonical_state_dict(module.state_dict()).items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={"format": "pt", **{k: str(v) for k, v in metadata.items()}})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_weights(module: torch.nn.Module, path: str | Path, strict: bool = True) -> torch.nn.Module:
    """Load a safetensors state dict into `module` (in place; its device and memory format are kept)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no weights file at {path}")
    state = canonical_state_dict(load_file(str(path)))
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise UserError(f"{path} does not fit this model: {str(e).splitlines()[0]} (is it the same model.name "
                        f"and model.num_classes?)") from None
    return module


WHICH = ("last", "best")


def run_weights_file(which: str = "last", ema: bool = False) -> str:
    """The name of a run directory's weights file: the last epoch's (model.safetensors, ema.safetensors)
    or the best validation epoch's (best.safetensors, best_ema.safetensors)."""
    if which not in WHICH:
        raise UserError(f"weights={which}: choose one of {', '.join(WHICH)}")
    return {("last", False): "model.safetensors", ("last", True): "ema.safetensors",
            ("best", False): "best.safetensors", ("best", True): "best_ema.safetensors"}[which, ema]


def run_weights(run_dir: str | Path, which: str = "last", ema: bool = True) -> Path:
    """The weights file `load_run` loads from a run directory (its EMA weights when the run had EMA, and
    `ema`); UserError naming the fix when the run has none."""
    run_dir = Path(run_dir)
    weights = run_dir / run_weights_file(which, ema=True)
    if not (ema and weights.is_file()):
        weights = run_dir / run_weights_file(which)
    if not weights.is_file() and which == "best":
        raise UserError(f"{run_dir} has no best.safetensors: best weights are kept only with a validation split "
                        f"(data.val_size > 0), from its first evaluation on; use the last weights (weights=last)")
    if not weights.is_file():
        raise UserError(f"{run_dir} has no model.safetensors: the run has not finished (resume it with "
                        f"train.resume=auto run.dir={run_dir})")
    return weights


def load_run(run_dir: str | Path, *, which: str = "last", ema: bool = True,
             device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained model of a run directory, in eval mode: `which` "last" (the finished run's last epoch) or
    "best" (the epoch with the best validation accuracy); its EMA weights when the run had EMA (and `ema`).
    Built with the run's own `model.name` and class count; `run_weights` names the file it loads."""
    import yaml

    from harness.models.registry import create_model

    run_dir = Path(run_dir)
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = yaml.safe_load(cfg_file.read_text())
    weights = run_weights(run_dir, which, ema)
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:  # the trained class count (the config may say 0: from the data)
        meta = f.metadata() or {}
    num_classes = int(meta.get("num_classes") or cfg["model"].get("num_classes") or 10)
    model = create_model(cfg["model"]["name"], num_classes=num_classes)
    load_weights(model, weights, strict=True)
    return model.to(device).eval()

