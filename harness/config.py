"""Typed configuration: nested dataclasses are the source of truth.

A run's config is built in three layers, later wins:
  1. the dataclass defaults below (the seeds' recipe: resnet18, SGD 0.1 @ batch 128, cosine, 20 epochs),
  2. a YAML recipe from `configs/` (`--config configs/X.yaml`),
  3. dotted command-line overrides (`optim.lr=0.2 train.epochs=5`).
Unknown keys, wrong types and values outside a field's `choices` raise `ConfigError` naming the key and
what is allowed. The resolved config serialises back to YAML and is saved in every run directory.

This module owns what a config is and how its values load (`from_dict`, `load`, `apply_overrides`); every
tool's dataclass (the benchmark's, the sweep's, ...) is built on it. Reading a command line into one is
harness/cli.py's job: a YAML recipe or a sweep's overrides are config without a command line.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError


class ConfigError(UserError, ValueError):
    """A mistake in a config file or override: names the key and what is allowed."""


def choices(*allowed, default):
    """A field whose value must be one of `allowed` (checked on load and on override)."""
    return field(default=default, metadata={"choices": allowed})


@dataclass
class ModelConfig:
    name: str = "resnet18"  # a name from `python -m harness.models`, or your own: my_pkg.my_module:build, timm/<name>
    num_classes: int = 0  # 0: taken from the dataset (10 for CIFAR-10, 100 for CIFAR-100)
    init_from: str = ""  # start from these weights: a run directory, a .safetensors/.pth state dict, or torchvision ImageNet weights (keys that do not fit are re-initialised and listed)
    whiten: bool = False  # patch-whitening init (harness/training/whiten.py): the first conv's filters become the eigenvectors of the training images' patch covariance / sqrt(eigenvalue + whiten_eps), and their negatives, then stay frozen (airnet's 2x2 conv is built for it)
    whiten_eps: float = 5e-4  # added to every eigenvalue of the patch covariance: caps the gain of the flattest directions
    whiten_images: int = 5000  # training images whose patches estimate the covariance (airbench: 5000)
    whiten_bias_epochs: float = 0.0  # with model.whiten: the whitened conv's bias trains for this many epochs, its lr falling linearly from the peak to 0, then stops (0: it trains as any bias; airbench: 3)
    drop_path: float | None = None  # stochastic depth: each residual block's branch is dropped per sample while training at a rate rising linearly with depth from 0 to this at the last block (MobileNet v2, EfficientNet: torchvision's EfficientNet rule, this x i / n at block i of n, all blocks counted) (torchvision's StochasticDepth, row mode); a rate in [0, 1); null: the model's own default (off, except efficientnet_b0's 0.2); only the ResNet family (not plainnet), DenseNet, MobileNet v2, EfficientNet and ConvNeXt have it


@dataclass
class DataConfig:
    dataset: str = choices("cifar10", "cifar100", default="cifar10")
    root: str = "data"  # holds cifar-10-batches-bin/ or cifar-10-batches-py/ (cifar-100-* likewise)
    format: str = choices("auto", "bin", "py", default="auto")  # auto: whichever is present, bin first
    # official: python files must match torchvision's md5 list, binary files the official sizes;
    # structure: record structure, keys, shapes and label ranges only (re-encoded or small copies).
    verify: str = choices("official", "structure", default="official")
    download: bool = True  # fetch missing files when online (rank 0 downloads, the others wait)
    limit_train: int = 0  # use only the first N training images (0: all)
    val_size: int = 0  # hold out the last N training images for validation (0: none)
    backend: str = choices("auto", "torch", "dali", "synthetic", default="auto")  # auto: the data bench's measured winner for the device (harness/data/loaders.py AUTO_BACKEND; torch until a GPU figure shows DALI faster)
    augment: bool = True  # random crop with padding + horizontal flip on the training set
    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0  # side of a zeroed square (0: off)
    flip_mode: str = choices("random", "alternate", default="random")  # random: a fresh coin per image and epoch; alternate: the image's epoch-0 coin XOR (epoch % 2), so each image is seen both ways in consecutive epochs (airbench's derandomised flip)
    pad_mode: str = choices("zeros", "reflect", default="zeros")  # the random crop's padding: zeros, or the image mirrored across its border (reflect, edge pixel not repeated)
    prefetch: int = 2  # DALI prefetch queue depth
    drop_last: bool = True  # training: drop the samples that do not fill a last global batch; false: fill it by wrapping around the epoch's order (evaluation never drops)
    synthetic_size: int = 50000  # images per epoch for backend=synthetic
    classes: list[int] = field(default_factory=list)  # keep only these class indices, relabelled 0..k-1 in this order ([]: all)
    mixup: float = 0.0  # mixup's Beta(alpha, alpha) (timm --mixup; 0: off): each training image becomes lam x_i + (1 - lam) x_j with its partner in the global batch, and the loader yields soft targets
    cutmix: float = 0.0  # cutmix's Beta(alpha, alpha) (timm --cutmix; 0: off): a box of the partner's image replaces the image's, lam recomputed from the clipped box; soft targets
    mix_switch_prob: float = 0.5  # with both mixup and cutmix on: the probability that an image gets cutmix rather than mixup (timm --mixup-switch-prob)
    mix_stop_epoch: int = 0  # no mixing from this (0-based) epoch on; the targets stay soft, one-hot (timm --mixup-off-epoch; 0: never stop)
    randaugment: str = ""  # RandAugment as rand-m<magnitude 0..30>-n<ops per image>, e.g. rand-m9-n2 (torchvision's op set and magnitudes, per image; "": off). The backends draw the same ops but render two differently: with data.backend=dali, Equalize is OpenCV's table (up to 65 levels from torchvision's) and Color is one level off on 0.16% of the pixels (harness/data/dali.py)
    random_erasing: float = 0.0  # probability that a training image gets one rectangle erased to 0 after normalisation (torchvision's RandomErasing: area 2-33%, aspect 0.3-3.3; timm --reprob; 0: off)
    test_subset: str = "auto"  # accuracy also on these test images (summary test_subset_acc, with its 95% interval): a JSON list of test-image indices (or {"indices": [...]}); auto: data.root/test_exact.json when present (e.g. the test images of a recovered copy that are bit-exact); none (or ""): off


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128  # global: split evenly across processes
    precision: str = choices("auto", "fp32", "bf16", "fp16", default="auto")  # auto: the launcher's --mixed_precision, else bf16 on a GPU that has it, fp16 (grad scaler) on older GPUs, fp32 on a CPU
    channels_last: bool = True
    compile: bool | str = choices(True, False, "auto", default="auto")  # torch.compile; auto: the launcher's --dynamo_backend, else on for a GPU, off for a CPU
    compile_mode: str = choices(
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", default="default"
    )
    target_acc: float = 0.0  # stop when validation (else test) accuracy reaches it (0: off)
    resume: str = ""  # "": fresh run; "auto": latest checkpoint in run.dir if any; or a checkpoint path
    resume_force: bool = False  # resume even though the recipe changed since the checkpoint (every change is recorded in provenance.json); without it a changed key outside config.RESUMABLE stops the run
    grad_accum: int = 1  # micro-batches per optimiser step; batch_size is the micro-batch, globally
    grad_clip: float = 0.0  # max global grad norm (0: off)
    label_smoothing: float = 0.0
    ema: float = 0.0  # EMA decay of the weights, evaluated instead of the raw weights (0: off)
    tta: str = choices("none", "flip", "flip_translate", default="none")  # test-time augmentation, mean logits over views: flip: the image and its mirror; flip_translate: also both shifted one pixel up-left and down-right (reflect padding), 6 views, the unshifted pair weighing 1/2
    lookahead_every: int = 0  # Lookahead: every k optimiser steps the slow weights move toward the fast ones and the fast restart from them; the last step leaves the slow weights (0: off; airbench94: 5)
    lookahead_decay: float = 0.7738  # the slow weights' decay at the end of training, ramping as (step/total)^3 from 0 (airbench94: 0.95^5)
    warmup_run: bool = False  # before the timed run, train a few steps on throwaway copies of the weights and optimiser (compilation and cuDNN autotuning out of time_s), then restore them
    repeats: int = 1  # train this many seeds (run.seed, run.seed+1, ...), each in run.dir/seed-<k>, and write run.dir/repeats.json: accuracy and time, mean ± std and 95% interval
    eval_every: int = 1  # epochs between evaluations (the last epoch is always evaluated; 0: only the last)
    eval_batch_size: int = 1000  # global
    eval_limit: int = 0  # evaluate on the first N test (and validation) images only, for smoke runs (0: all); recorded in the summary; refused with train.repeats > 1 or train.target_acc > 0, whose figures are the ones published
    max_steps: int = 0  # stop after this many optimiser steps in total (0: off); for smoke tests
    sync_bn: bool = False  # SyncBatchNorm: batch statistics over all processes (small per-GPU batches; restores the 1-GPU trajectory for BN models)
    log_grad_norms: bool = False  # per-layer gradient norms (by depth) at log intervals, to grad_norms.jsonl
    freeze: str = choices("none", "head", "gradual", default="none")  # head: train only the classifier; gradual: then unfreeze stages from the top at train.unfreeze_epochs
    unfreeze_epochs: list[int] = field(default_factory=list)  # freeze=gradual: epoch at which the 1st, 2nd, ... stage below the head starts training (stages not listed stay frozen)


@dataclass
class OptimConfig:
    name: str = choices("sgd", "adamw", "muon", default="sgd")  # muon: 4-D conv filters get Newton-Schulz orthogonalised momentum (muon_lr, muon_momentum), the rest SGD (nesterov as set)
    muon_lr: float = 0.24  # optim.name=muon: the conv filters' peak lr (orthogonalised updates have a fixed size: not batch-scaled; follows the schedule)
    muon_momentum: float = 0.6  # optim.name=muon: the conv filters' momentum (nesterov)
    lr: float = 0.1  # the learning rate at ref_batch_size ...
    ref_batch_size: int = 128  # ... scaled to train.batch_size * train.grad_accum by lr_scaling
    lr_scaling: str = choices("linear", "sqrt", "none", default="linear")
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 5e-4
    no_wd_norm_bias: bool = False  # exclude norm weights and all biases from weight decay
    weight_decay_mode: str = choices("coupled", "decoupled", default="coupled")  # decoupled: at the peak lr each step removes weight_decay x batch/ref_batch_size of every decayed weight, whatever its group's lr (then scaled by the schedule, as airbench)
    bias_lr_scale: float = 1.0  # lr multiplier for 1-D parameters: biases and norm scales/shifts (airbench94: 64 for BatchNorm biases)
    freeze_norm_weights: bool = False  # norm layers' scales stay at their init (1): only their biases train (airbench)
    schedule: str = choices("cosine", "onecycle", "linear", "triangular", "constant", default="cosine")  # linear with no warm-up: straight from the peak to min_lr_ratio; triangular: 0.2 x peak rising to the peak (default at 23% of the steps), then linear to min_lr_ratio (airbench94)
    warmup_epochs: float = 0.0  # linear warm-up from 0 (onecycle: the rising part; default 0.3 * epochs)
    min_lr_ratio: float = 0.0  # the schedule's floor, as a fraction of the peak lr
    layer_lr_decay: float = 1.0  # discriminative lr: each stage below the head trains at lr x decay^depth-from-top (1: off)


@dataclass
class RunConfig:
    dir: str = ""  # the run directory, exactly this path ("" -> runs/<model>-<UTC time>)
    seed: int = 0
    name: str = ""  # W&B run name ("" -> the run directory's name)
    log_every: int = 50  # optimiser steps between metrics.jsonl rows (and the only .item() syncs)
    checkpoint_every: int = 1  # epochs between checkpoints (0: only at the end and on a signal)
    keep_checkpoints: int = 2
    progress: bool = True  # a progress bar with ETA on the console (rank 0)
    wandb: bool = True  # W&B tracking through accelerate (offline unless W&B credentials are found: harness.run.tracker.wandb_mode)
    wandb_project: str = "harness"
    wandb_group: str = ""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


# Keys that may differ between the segments of one run (train.resume), each with why: they change where and
# how the run is recorded, shown, checkpointed or evaluated, how fast it runs, or how long it goes on, not the
# trajectory of the steps already taken. Any other change is a different recipe: resuming refuses it unless
# train.resume_force=true (docs/training.md, "Resume"). train.resume and train.resume_force describe the
# start itself and are never compared.
RESUMABLE = {
    "train.epochs": "extends or shortens the run; the lr schedule is recomputed over the new total from the "
                    "step reached (a cosine lr moves to the new curve's value there)",
    "train.max_steps": "as train.epochs",
    "train.eval_every": "which epochs are evaluated", "train.eval_batch_size": "evaluation batches only",
    "train.compile": "speed: the same maths (checkpoints hold the raw model's weights)",
    "train.compile_mode": "speed", "train.channels_last": "memory layout", "train.warmup_run": "speed: throwaway steps",
    "train.log_grad_norms": "recording", "run.log_every": "recording", "run.progress": "the console",
    "run.wandb": "recording", "run.name": "the W&B display name",
    "run.checkpoint_every": "when checkpoints are written", "run.keep_checkpoints": "how many are kept",
    "run.dir": "where the run is now (a moved run directory)",
    "data.root": "where the data is now: allowed when it holds the same files (names and sizes) as at the "
                 "last start",
    "data.download": "whether missing files may be fetched", "data.prefetch": "DALI's queue depth: speed",
    "data.test_subset": "which test images are also reported apart (the test set never selects)",
}
NOT_COMPARED = ("train.resume", "train.resume_force")


def recipe_changes(stored: dict, cfg) -> dict[str, tuple]:
    """{dotted key: (stored value, new value)} for every key whose value differs between `stored` (a run's
    config.yaml as loaded) and `cfg`, outside NOT_COMPARED. A key the stored config lacks (added to the
    harness since) counts as unchanged when `cfg` holds its default: a new key's default keeps the old
    behaviour. A key `cfg` lacks (removed from the harness since) counts as unchanged when its stored value
    is off (false, 0, null, empty): an option that was off did nothing. One that was on is named (a run
    with train.tta_flip=true, which train.tta replaced, is another recipe for today's harness)."""
    old, new, default = flatten(stored or {}), flatten(yaml.safe_load(to_yaml(cfg))), leaf_keys(type(cfg)())
    missing = object()
    changes = {}
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, missing), new.get(key, missing)
        if (key in NOT_COMPARED or before == after or (before is missing and after == default.get(key, missing))
                or (after is missing and not before)):
            continue
        changes[key] = (None if before is missing else before, None if after is missing else after)
    return changes


# ----------------------------------------------------------------------------------------------------
# Loading, checking, overriding, serialising


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def value_text(value) -> str:
    """A value as it is typed on the command line (YAML flow style): 0.1, true, '', [0.9, 0.999]."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("...\n").strip()


def _coerce(value: Any, tp, key: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `key`. Ints are accepted for floats;
    nothing else is converted (a string "5" for an int is an error, so typos do not pass silently)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        # YAML reads `run.name=123` as an int; a string field takes its text
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {tp}")  # a programming error, not a user one


def _unknown_key(key: str, allowed: list[str], close: list[str] | None = None) -> ConfigError:
    """`close`: the keys it most likely meant (`close_keys`); by default the closest names at its level."""
    if close is None:
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], allowed, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key '{key}'.{hint} Allowed here: {', '.join(sorted(allowed))}")


def leaf_keys(obj, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} for every value of a dataclass instance, nested sections included."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(leaf_keys(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def flatten(data: dict, prefix: str = "") -> dict:
    """{train: {epochs: 1}} -> {"train.epochs": 1}: a nested mapping (a loaded config.yaml, a sweep's fixed
    overrides) under dotted keys."""
    flat = {}
    for key, value in data.items():
        key = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def close_keys(obj, name: str, n: int = 3) -> list[str]:
    """The keys of `obj` (a dataclass instance) that `name` most likely meant, best first:
    another spelling of a key (`data-root`, `data_root` -> data.root; `budget-min` -> budget_min), a section
    or its plural for its `name` (`model`, `models` -> model.name), a key's last part (`epochs` ->
    train.epochs), else the closest by spelling (`optim.lrr` -> optim.lr)."""
    keys = leaf_keys(obj)
    name = name.lstrip("-")
    underscored = name.replace("-", "_")
    dotted = name.replace("-", ".")
    forms = list(dict.fromkeys([name, underscored, dotted, dotted.replace("_", ".")]))
    for form in forms:
        if form in keys:
            return [form]
    for form in forms:
        for section in (form, form.removesuffix("s")):
            if f"{section}.name" in keys:
                return [f"{section}.name"]
    by_leaf = [k for k in keys if any(k.endswith("." + form) for form in forms)]
    if by_leaf:
        return by_leaf[:n]
    # by spelling, 0.75: a letter or two off (epocs, lrr) matches, a different word does not (out is not
    # cutout, 0.67); within a section its own keys only (train.epocs is not train.repeats, 0.75 as a whole)
    section, _, leaf = underscored.rpartition(".")
    inside = [k.rpartition(".")[2] for k in keys if section and k.rpartition(".")[0] == section]
    if inside:
        return [f"{section}.{m}" for m in difflib.get_close_matches(leaf, inside, n, 0.75)]
    leaves = {k.rsplit(".", 1)[-1]: k for k in reversed(list(keys))}  # the first key of a leaf name wins
    return difflib.get_close_matches(underscored, list(keys), n, 0.75) or [
        leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n, 0.75)]


def _set_field(obj, f: dataclasses.Field, value: Any, key: str) -> None:
    hints = typing.get_type_hints(type(obj))
    tp = hints[f.name]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section (mapping of keys), got {value!r}")
        _update(getattr(obj, f.name), value, key)
        return
    value = _coerce(value, tp, key)
    allowed = f.metadata.get("choices")
    if allowed and value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(value_text, allowed))}")
    setattr(obj, f.name, value)


def _update(obj, data: dict, prefix: str = "") -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise _unknown_key(key, list(fields))
        _set_field(obj, fields[name], value, key)


def from_dict(cls, data: dict | None):
    """Build `cls` from a (possibly partial, nested) mapping, checking every key and value."""
    obj = cls()
    if data:
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
        _update(obj, data)
    return obj


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def parse_override(text: str) -> tuple[str, Any]:
    """`optim.lr=0.2` -> ("optim.lr", 0.2). The value is read as YAML, so 1e-3, true, [1, 2] work."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. optim.lr=0.2)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has no key before '='")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # e.g. a path with a colon: leave it as text, the field's type decides
    # YAML 1.1 reads 1e-3 (no dot) as a string: accept it as a number where it parses as one
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") and value.strip() else value
        except ValueError:
            pass
    return key, value


def apply_overrides(cfg, overrides: list[str]):
    """Apply dotted `key=value` overrides in order; each key must name an existing field."""
    for text in overrides:
        set_value(cfg, *parse_override(text))
    return cfg


def set_value(cfg, key: str, value: Any):
    """Set the dotted `key` of `cfg` to `value`, checked against the field's type and choices."""
    obj, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(obj)}
        here = ".".join(parts[: i + 1])
        if part not in fields:
            raise _unknown_key(here, list(fields), close_keys(cfg, key))
        f = fields[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)) and not isinstance(value, dict):
                raise ConfigError(f"{here} is a section; set one of its keys, e.g. {here}.<key>=...")
            _set_field(obj, f, value, here)
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"{here} is a value, not a section; use {here}=...")
    return cfg


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (recipes live in configs/, e.g. configs/resnet18.yaml)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load(cls, path: str | Path | None = None, overrides: list[str] | None = None):
    """defaults -> YAML recipe at `path` -> overrides."""
    data = load_yaml(path) if path else None
    try:
        cfg = from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return apply_overrides(cfg, overrides or [])
