"""What trains: the one module that sets `requires_grad` on a model's parameters.

Three reasons a parameter does not train, all decided here:
  * fixed for the whole run (`freeze`): the whitened first conv's filters (model.whiten, called by
    harness/training/whiten.py) and the norm layers' scales under optim.freeze_norm_weights
    (`freeze_norm_weights`, called by the optimiser build before it collects what trains);
  * frozen by stage (`Freezer`, train.freeze): head: only the head trains; gradual: the head, then the
    stage below it from epoch train.unfreeze_epochs[0], the next from [1], ... (stages not listed stay
    frozen). A frozen stage gets requires_grad=False (no gradient, so the optimiser skips it: its weights
    stay bit-equal) and momentum 0 in its norm layers (their running statistics stay put too). A stage that
    thaws never brings back a parameter fixed for the run.

A model's *stages* are its top-level children that hold parameters, in registration order, a norm layer
joining the stage before it (ResNet: stem = conv1 + bn1, layer1..layer4, fc; VGG: features, classifier).
The last stage is the *head* (the classifier). optim.layer_lr_decay gives each stage its own lr
(`stage_depths`, read by harness/training/optim.py); `harness.inspect` draws feature maps at the same stages.
Order matters in a run: the optimiser is built over everything that ever trains, then `Freezer.apply(0)`,
before DDP wraps the model (DDP registers the parameters that require grad then).
"""
from __future__ import annotations

from typing import Iterable

from torch import nn

from harness import config as C
from harness.errors import UserError

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def freeze(params: Iterable[nn.Parameter]) -> None:
    """These parameters stay as they are for the whole run."""
    for p in params:
        p.requires_grad_(False)


def freeze_norm_weights(model: nn.Module) -> None:
    """optim.freeze_norm_weights: norm layers' scales stay at their init (1); only their biases train (airbench)."""
    freeze(m.weight for m in model.modules() if isinstance(m, NORM_LAYERS) and getattr(m, "weight", None) is not None)


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


def stage_params(mods: list[nn.Module]) -> list[nn.Parameter]:
    return [p for m in mods for p in m.parameters()]


def stage_depths(model: nn.Module) -> dict[int, int]:
    """{id(parameter): its stage's depth below the head} (head 0, the stage below it 1, ...)."""
    parts = stages(model)
    return {id(p): len(parts) - 1 - i for i, (_, mods) in enumerate(parts) for p in stage_params(mods)}


class Freezer:
    """Which stages train at a given epoch (train.freeze, train.unfreeze_epochs); `apply(epoch)` at each
    epoch's start (and once before DDP wraps the model, so DDP sees the first epoch's trainable set)."""

    def __init__(self, model: nn.Module, train: C.TrainConfig):
        self.strategy, self.unfreeze = train.freeze, list(train.unfreeze_epochs)
        self.stages = stages(model)
        # kept here although harness/training/checks.py checks the rest: it needs the model's stages
        if len(self.unfreeze) > len(self.stages) - 1:
            raise C.ConfigError(f"train.unfreeze_epochs has {len(self.unfreeze)} entries but the model has only "
                                f"{len(self.stages) - 1} stages below its head: "
                                f"{', '.join(n for n, _ in self.stages[:-1])}")
        self.momentum = {m: m.momentum for _, mods in self.stages for mod in mods for m in mod.modules()
                         if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        # parameters fixed before us (whitening, optim.freeze_norm_weights) stay fixed when their stage thaws
        self.fixed = {id(p) for _, mods in self.stages for p in stage_params(mods) if not p.requires_grad}

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
            for p in stage_params(mods):
                p.requires_grad_(on and id(p) not in self.fixed)
            for mod in mods:
                for m in mod.modules():
                    if m in self.momentum:  # momentum 0: running mean/var stay as loaded (a frozen stage)
                        m.momentum = self.momentum[m] if on else 0.0
            if on:
                names.append(name)
        return names
