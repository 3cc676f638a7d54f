"""Fine-tuning: start from other weights (`model.init_from`), freeze by stage (`train.freeze`), and give each
stage its own learning rate (`optim.layer_lr_decay`), as 004 project 3 compares unfreezing strategies.

A model's *stages* are its top-level children that hold parameters, in registration order, a norm layer
joining the stage before it (ResNet: stem = conv1 + bn1, layer1..layer4, fc; VGG: features, classifier).
The last stage is the *head* (the classifier). `harness.inspect` draws feature maps at the same stages.

  init_from   a run directory (its EMA weights when present, as `load_run`), a `.safetensors` or
              `.pth`/`.pt` state dict, or a torchvision ImageNet file (`downsample.` keys are renamed to the
              zoo's `shortcut.`; a stem kernel of another size is resampled to the zoo's). A tensor whose
              shape differs (a 1000-class head into a 10-class model) is skipped and keeps its fresh
              initialisation; `apply_init` returns the loaded/adapted/skipped/missing keys, train prints it.
  freeze      none; head: only the head trains; gradual: the head, then the stage below it from epoch
              train.unfreeze_epochs[0], the next from [1], ... (stages not listed stay frozen).
              A frozen stage gets requires_grad=False (no gradient, so the optimiser skips it: its weights
              stay bit-equal) and momentum 0 in its norm layers (their running statistics stay put too).
  layer_lr_decay  a stage k below the head trains at lr x decay^k: one optimiser group per stage, carrying
              its `lr_scale`, which the loop multiplies into the scheduled lr.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness import config as C
from harness.errors import UserError
from harness.training.optim import NORM_LAYERS


def stages(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """[(stage name, [top-level modules])] from input to head; a norm layer joins the stage before it."""
    out: list[tuple[str, list[nn.Module]]] = []
    for name, child in model.named_children():
        if not any(True for _ in child.parameters()):
            continue
        if isinstance(child, NORM_LAYERS) and out:
            out[-1][1].append(child)
            out[-1] = (f"{out[-1][0]}+{name}", out[-1][1])
        else:
            out.append((name, [child]))
    if len(out) < 2:
        raise UserError(f"{type(model).__name__} has {len(out)} stage(s) with parameters: fine-tuning by stage "
                        f"needs a body and a head")
    return out


def _stage_params(mods: list[nn.Module]) -> list[nn.Parameter]:
    return [p for m in mods for p in m.parameters()]


# ----------------------------------------------------------------------------------------------------
# init_from


def _read_state(source: str) -> dict[str, torch.Tensor]:
    from harness.models import load_run
    from harness.models.weights import canonical_state_dict

    path = Path(source)
    if path.is_dir():
        return load_run(path).state_dict()
    if not path.is_file():
        raise UserError(f"model.init_from={source}: no such run directory or weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return canonical_state_dict(load_file(str(path)))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code in it, or not a torch file at all
        raise UserError(f"model.init_from={source}: cannot read it as a state dict ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}); give a .safetensors/.pth state dict or a run directory")
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"model.init_from={source}: not a state dict of tensors")
    return canonical_state_dict(state)


def _torchvision_names(key: str) -> str:
    """torchvision's ResNet names its projection shortcut `downsample`; the zoo (after the seeds) `shortcut`."""
    return key.replace(".downsample.", ".shortcut.")


def _resample_kernel(w: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A conv kernel resampled to another spatial size (ImageNet's 7x7 stem -> the zoo's 3x3 for 32x32
    images), scaled so each filter's sum, and so its response to a flat patch, is kept."""
    out = F.interpolate(w.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return (out * (w.shape[-2] * w.shape[-1]) / (size[0] * size[1])).to(w.dtype)


def apply_init(model: nn.Module, source: str) -> str:
    """Load the tensors of `source` that fit `model` (in place); return a one-paragraph account of what was
    loaded, adapted, skipped (shape differs: fresh init kept) and missing. "" when `source` is ""."""
    if not source:
        return ""
    state = {_torchvision_names(k): v for k, v in _read_state(source).items()}
    own = model.state_dict()
    loaded, adapted, skipped = [], [], []
    new = {}
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key]
        if value.shape == target.shape:
            new[key] = value
            loaded.append(key)
        elif value.dim() == 4 and value.shape[:2] == target.shape[:2]:
            new[key] = _resample_kernel(value, tuple(target.shape[-2:]))
            adapted.append(f"{key} {tuple(value.shape[-2:])}->{tuple(target.shape[-2:])}")
        else:
            skipped.append(f"{key} {tuple(value.shape)} vs {tuple(target.shape)}")
    if not loaded and not adapted:
        raise UserError(f"model.init_from={source}: none of its {len(state)} tensors fits this model (first keys: "
                        f"{', '.join(list(state)[:3])}); is it weights of the same model family?")
    model.load_state_dict(new, strict=False)
    skipped_keys = {s.split(" ", 1)[0] for s in skipped}
    missing = [k for k in own if k not in new and k not in skipped_keys]
    unexpected = [k for k in state if k not in own]
    show = lambda keys: ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")  # noqa: E731
    lines = [f"init_from {source}: loaded {len(loaded)} of the model's {len(own)} tensors"]
    if adapted:
        lines.append(f"adapted (kernel resampled): {show(adapted)}")
    if skipped:
        lines.append(f"skipped, shape differs, freshly initialised: {show(skipped)}")
    if missing:
        lines.append(f"not in the file, freshly initialised: {show(missing)}")
    if unexpected:
        lines.append(f"in the file but not in the model, ignored: {show(unexpected)}")
    return "\n  ".join(lines)


# ----------------------------------------------------------------------------------------------------
# freezing and per-stage learning rates


def check_config(cfg: C.Config, world: int) -> None:
    """Fine-tuning settings that cannot work, refused before the run starts."""
    t = cfg.train
    if t.unfreeze_epochs and t.freeze != "gradual":
        raise C.ConfigError(f"train.unfreeze_epochs={t.unfreeze_epochs} is only used with train.freeze=gradual "
                            f"(now {t.freeze})")
    if t.freeze == "gradual":
        if not t.unfreeze_epochs:
            raise C.ConfigError("train.freeze=gradual needs train.unfreeze_epochs, the epoch at which each stage "
                                "below the head starts training, e.g. train.unfreeze_epochs=[1,2,3]")
        if any(e < 0 for e in t.unfreeze_epochs) or t.unfreeze_epochs != sorted(t.unfreeze_epochs):
            raise C.ConfigError(f"train.unfreeze_epochs={t.unfreeze_epochs}: non-negative and non-decreasing "
                                f"(the stage nearest the head first)")
        if world > 1:  # DDP registers its gradient hooks once, for the parameters that then require grad
            raise C.ConfigError("train.freeze=gradual changes which parameters train during the run, which DDP "
                                "does not follow; run it on one process (train.freeze=head works on any number)")
    if cfg.optim.layer_lr_decay <= 0:
        raise C.ConfigError(f"optim.layer_lr_decay={cfg.optim.layer_lr_decay}: a positive factor such as 0.5 "
                            f"(1: the same lr for every stage)")


def stage_lr_groups(optimizer: torch.optim.Optimizer, model: nn.Module, optim: C.OptimConfig) -> torch.optim.Optimizer:
    """`optimizer` with each group split by stage, stage k below the head at lr_scale x decay^k
    (optim.layer_lr_decay; the loop sets a group's lr to the scheduled lr x its lr_scale, harness.training.optim.set_lr).
    With optim.weight_decay_mode=decoupled the group's weight decay is divided by the same factor, so a step
    still removes the same fraction of each weight whatever the stage's lr. decay 1: unchanged."""
    decay = optim.layer_lr_decay
    if decay == 1.0:
        return optimizer
    parts = stages(model)
    depth = {id(p): len(parts) - 1 - i for i, (_, mods) in enumerate(parts) for p in _stage_params(mods)}
    groups = []
    for group in optimizer.param_groups:
        by_depth: dict[int, list] = {}
        for p in group["params"]:
            by_depth.setdefault(depth.get(id(p), 0), []).append(p)
        for d, params in sorted(by_depth.items()):
            f = decay**d
            groups.append({**group, "params": params, "lr": group["lr"] * f, "lr_scale": group.get("lr_scale", 1.0) * f,
                           "weight_decay": group["weight_decay"] / f if optim.weight_decay_mode == "decoupled"
                           else group["weight_decay"]})
    # regrouped in place, before any step (no state to carry): keeps the optimiser's class and settings
    optimizer.param_groups = []
    for g in groups:
        optimizer.add_param_group(g)
    return optimizer


class Freezer:
    """Which stages train at a given epoch (train.freeze, train.unfreeze_epochs); `apply(epoch)` at each
    epoch's start (and once before DDP wraps the model, so DDP sees the first epoch's trainable set)."""

    def __init__(self, model: nn.Module, train: C.TrainConfig):
        self.strategy, self.unfreeze = train.freeze, list(train.unfreeze_epochs)
        self.stages = stages(model)
        if len(self.unfreeze) > len(self.stages) - 1:
            raise C.ConfigError(f"train.unfreeze_epochs has {len(self.unfreeze)} entries but the model has only "
                                f"{len(self.stages) - 1} stages below its head: "
                                f"{', '.join(n for n, _ in self.stages[:-1])}")
        self.momentum = {m: m.momentum for _, mods in self.stages for mod in mods for m in mod.modules()
                         if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        # parameters frozen before us (optim.freeze_norm_weights) stay frozen when their stage thaws
        self.fixed = {id(p) for _, mods in self.stages for p in _stage_params(mods) if not p.requires_grad}

    def trainable(self, epoch: int) -> list[bool]:
        """Per stage (input first): does it train in `epoch` (0-based)?"""
        n = len(self.stages)
        if self.strategy == "none":
            return [True] * n
        from_top = [True] + [k < len(self.unfreeze) and self.strategy == "gradual" and epoch >= self.unfreeze[k]
                             for k in range(n - 1)]  # index 0: the head, 1: the stage below it, ...
        return from_top[::-1]

    def apply(self, epoch: int) -> list[str]:
        """Set requires_grad and norm momentum for `epoch`; returns the names of the trainable stages."""
        names = []
        for (name, mods), on in zip(self.stages, self.trainable(epoch)):
            for p in _stage_params(mods):
                p.requires_grad_(on and id(p) not in self.fixed)
            for mod in mods:
                for m in mod.modules():
                    if m in self.momentum:  # momentum 0: running mean/var stay as loaded (a frozen stage)
                        m.momentum = self.momentum[m] if on else 0.0
            if on:
                names.append(name)
        return names
