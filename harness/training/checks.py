"""Config checks: every mistake a training run would only hit later, refused before anything is written.

The one home of the training config's checks (the parser checks types and `choices`, harness/config.py):
`check_config(cfg, world)` takes every numeric key against its range, the model name against the zoo, the
batch against the process count, the fine-tuning keys against each other and the augmentation options and
model.drop_path through the code that owns them; `check_split(n, data)`
takes data.val_size against the training images, once they are counted. `harness/train.py` calls both,
and the sweep runner calls `check_config` for every run it expands (so a bad point fails the sweep at
start, not one run an hour in).

What can only be checked against something a config does not hold stays where that thing is: the
precision and compile settings against the device and the launcher (training/precision.py), the model's
stages against train.unfreeze_epochs (training/freeze.py's Freezer), a whitenable first conv
(training/whiten.py), the model.init_from file (training/finetune.py), the batch against the data
(harness/data's plan). Constructors also keep the checks they need when used on their own (EMA's decay,
Lookahead's interval), each with a comment saying so.
"""
from __future__ import annotations

from harness import config as C
from harness.errors import UserError


def check_config(cfg: C.Config, world: int) -> None:
    """Raise ConfigError naming the first key out of range for a run on `world` processes."""
    from harness.models import UnknownModelError, model_source

    try:
        model_source(cfg.model.name)
    except UnknownModelError as e:  # its message lists the closest names
        raise C.ConfigError(f"model.name: {e}") from None
    t, d, o, r = cfg.train, cfg.data, cfg.optim, cfg.run
    at_least = {1: [("train.epochs", t.epochs), ("train.batch_size", t.batch_size), ("train.grad_accum", t.grad_accum),
                    ("train.eval_batch_size", t.eval_batch_size), ("run.log_every", r.log_every),
                    ("run.keep_checkpoints", r.keep_checkpoints), ("data.prefetch", d.prefetch),
                    ("data.synthetic_size", d.synthetic_size), ("optim.ref_batch_size", o.ref_batch_size),
                    ("train.repeats", t.repeats), ("model.whiten_images", cfg.model.whiten_images)],
                0: [("train.eval_every", t.eval_every), ("train.max_steps", t.max_steps),
                    ("train.grad_clip", t.grad_clip), ("run.checkpoint_every", r.checkpoint_every),
                    ("data.limit_train", d.limit_train), ("data.val_size", d.val_size),
                    ("data.crop_padding", d.crop_padding), ("data.cutout", d.cutout),
                    ("optim.weight_decay", o.weight_decay), ("optim.warmup_epochs", o.warmup_epochs),
                    ("train.lookahead_every", t.lookahead_every), ("optim.bias_lr_scale", o.bias_lr_scale),
                    ("optim.muon_lr", o.muon_lr), ("model.whiten_eps", cfg.model.whiten_eps),
                    ("model.whiten_bias_epochs", cfg.model.whiten_bias_epochs), ("train.eval_limit", t.eval_limit)]}
    for low, items in at_least.items():
        for key, v in items:
            if v < low:
                raise C.ConfigError(f"{key}={v}: must be at least {low}"
                                    + (" (0: off)" if low == 0 and key != "train.eval_every" else "")
                                    + (" (0: evaluate only after the last epoch)" if key == "train.eval_every" else ""))
    fractions = [("train.label_smoothing", t.label_smoothing, "0.1"), ("optim.momentum", o.momentum, "0.9"),
                 ("optim.min_lr_ratio", o.min_lr_ratio, "0.01"), ("train.ema", t.ema, "0.999"),
                 ("train.lookahead_decay", t.lookahead_decay, "0.77"), ("optim.muon_momentum", o.muon_momentum, "0.6")]
    fractions += [(f"optim.betas[{i}]", b, "0.9") for i, b in enumerate(o.betas)]
    for key, v, example in fractions:
        if not 0.0 <= v < 1.0:
            raise C.ConfigError(f"{key}={v}: a fraction in [0, 1) such as {example}")
    if len(o.betas) != 2:
        raise C.ConfigError(f"optim.betas={o.betas}: two numbers, e.g. [0.9, 0.999]")
    if d.crop_padding > 16 or d.cutout > 32:
        raise C.ConfigError(f"data.crop_padding={d.crop_padding} / data.cutout={d.cutout}: at most 16 / 32 pixels "
                            f"for 32x32 images")
    if t.batch_size % world:
        raise C.ConfigError(f"train.batch_size={t.batch_size} does not divide across {world} processes; use a "
                            f"multiple of {world}, e.g. train.batch_size={max(world, t.batch_size // world * world)}")
    if not 0.0 <= t.target_acc <= 1.0:
        raise C.ConfigError(f"train.target_acc={t.target_acc}: a fraction in [0, 1] (e.g. 0.94), 0 for off")
    if o.lr <= 0:
        raise C.ConfigError(f"optim.lr={o.lr}: must be positive")
    _check_eval_limit(t)
    _check_finetune(cfg, world)
    _check_regularisation(cfg)


def _check_regularisation(cfg: C.Config) -> None:
    """The augmentation options and model.drop_path, by the code that owns them (Augment's construction,
    create_model's stochastic depth check on shapes only), before a run directory exists."""
    import torch

    from harness.data.interface import Augment
    from harness.models import create_model

    Augment.from_config(cfg.data)
    if cfg.model.drop_path is not None:
        with torch.device("meta"):
            create_model(cfg.model.name, drop_path=cfg.model.drop_path)


def _check_finetune(cfg: C.Config, world: int) -> None:
    """train.freeze / train.unfreeze_epochs / optim.layer_lr_decay: settings that cannot work together."""
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


def _check_eval_limit(t: C.TrainConfig) -> None:
    """train.eval_limit is for smoke runs: refused where a run's figures are the ones this project
    publishes. Those come from two mechanisms, whatever the recipe file: train.repeats > 1 (repeats.json:
    the speed recipe's n >= 10 accuracy and time, docs/speed.md) and train.target_acc > 0 (the time to a
    target accuracy: configs/fast_resnet18.yaml, the campaign's GPU steps). An accuracy on the first N
    test images must feed neither. A recipe's smoke run (fewer epochs, one seed, target off) may use it."""
    if t.eval_limit <= 0:
        return
    for key, value, off in (("train.repeats", t.repeats, 1), ("train.target_acc", t.target_acc, 0)):
        if value != off:
            raise C.ConfigError(f"train.eval_limit={t.eval_limit} evaluates part of the test set, which a published "
                                f"figure must not; {key}={value} makes one. For a smoke run set {key}={off}, or "
                                f"train.eval_limit=0 to evaluate every image")


def check_split(n_train: int, data: C.DataConfig) -> int:
    """data.val_size against the training images there are (after data.limit_train): some must be left.
    Returns how many training images the run uses (validation included)."""
    n = n_train if data.limit_train <= 0 else min(data.limit_train, n_train)
    if data.val_size >= n:
        raise UserError(f"data.val_size={data.val_size} leaves no training images out of {n}; lower it.")
    return n
