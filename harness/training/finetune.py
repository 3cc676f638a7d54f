"""Fine-tuning's start: other weights (`model.init_from`) loaded into a fresh model, as 004 project 3 compares
unfreezing strategies. Freezing by stage (`train.freeze`) is harness/training/freeze.py's, a stage's own
learning rate (`optim.layer_lr_decay`) the optimiser's (harness/training/optim.py).

`init_from` is a run directory (its EMA weights when present, as `load_run`), a `.safetensors` or
`.pth`/`.pt` state dict, or a torchvision ImageNet file (`downsample.` keys are renamed to the zoo's
`shortcut.`; a stem kernel of another size is resampled to the zoo's). A tensor whose shape differs (a
1000-class head into a 10-class model) is skipped and keeps its fresh initialisation; `apply_init` returns
the loaded/adapted/skipped/missing keys, train prints it.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import UserError


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
