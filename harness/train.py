"""Train a zoo model on CIFAR: `accelerate launch harness/train.py [--config configs/X.yaml] [key=value ...]`.

Also `python -m harness.train ...` (one process). With no arguments: resnet18 on CIFAR-10 with the seeds'
recipe (SGD 0.1 momentum 0.9 wd 5e-4 at batch 128, cosine, crop+flip, 20 epochs), channels_last, and
precision/compile `auto` (bf16 + torch.compile on a GPU, or what the launcher names). `--help` lists every
key with its description.

main() reads top to bottom: config -> accelerator -> data -> model -> compile/prepare -> loop -> report.
Accelerate owns distribution (DDP over any number of processes and nodes), mixed precision (bf16 autocast;
fp16 with its gradient scaler) and compilation (its dynamo plugin compiles the DDP-wrapped model); the
config and the launcher must agree on the last two (harness/training/precision.py). The loop itself is plain
PyTorch: a pure `lr_at(step)`, `.item()` only at log intervals, evaluation outside the timed region.
Around it, one module per job: optim.py (optimiser, schedule), ema.py, evaluate.py, checkpoint.py
(checkpoints, the run lock, stopping on a signal), run.py (run directory, tracking); the speed recipe's
options (docs/speed.md): whiten.py, lookahead.py, warmup.py, and repeats.py (train.repeats, in cli()).

N processes follow the 1-process trajectory at the same global batch: the data plan depends only on
(seed, epoch, position in the global batch), DDP averages the gradients, and the weights start identical;
the model's own (raw) module is kept beside the DDP/compiled wrapper for EMA and for saving.
"""
from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: put the repo root, not harness/, first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch

from harness import config as C
from harness.cli import parse_args, run_cli
from harness.training import finetune, gradflow  # model.init_from, train.freeze, per-stage lr; train.log_grad_norms
from harness.run.checkpoints import Checkpoints, resolve_resume
from harness.run.directory import RunLock
from harness.run.stop import StopRequest
from harness.console import Progress
from harness.data.cifar import Dataset, Split, load_dataset, random_split, select_classes
from harness.data.loaders import Augment, build_loader, resolve_backend
from harness.training.ema import EMA
from harness.errors import UserError
from harness.training.evaluate import Interrupted, evaluate_all
from harness.training.lookahead import Lookahead
from harness.training.optim import batch_ratio, build_optimizer, limit_steps, lr_at, scaled_lr, set_lr
from harness.training.precision import resolve_compile, resolve_precision
from harness.provenance import peak_memory_mb, provenance
from harness.run.directory import default_run_dir, record_provenance
from harness.run.tracker import Tracker
from harness.tables import write_json
from harness.training.step import cross_entropy, optimizer_step, train_step
from harness.training.warmup import warm_up
from harness.training.whiten import init_whitening


class TrainState:
    """Loop position and results so far; saved in every checkpoint (accelerate custom object)."""

    def __init__(self):
        self.epoch, self.batch, self.step = 0, 0, 0
        self.best_val, self.best_epoch, self.test_at_best = -1.0, -1, None
        self.train_s, self.time_to_target_s, self.epoch_rates = 0.0, None, []
        self.pending_eval = False  # the epoch ended but its evaluation was cut short by a stop signal

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


def load_data(cfg: C.Config, accelerator) -> Dataset:
    if cfg.data.backend == "synthetic":  # no files: random images, for benchmarks
        n = cfg.data.synthetic_size
        k = 10 if cfg.data.dataset == "cifar10" else 100
        return Dataset(cfg.data.dataset, random_split(n, k, cfg.run.seed), random_split(1000, k, cfg.run.seed + 1),
                       k, [str(i) for i in range(k)], "synthetic")
    # one process per node downloads if needed (data.root may be node-local); the others then read its files
    with accelerator.local_main_process_first():
        return load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.format, cfg.data.verify, cfg.data.download)


def split_train_val(ds: Dataset, limit: int, val_size: int) -> tuple[Split, Split | None]:
    """data.limit_train keeps the first N training images; data.val_size holds out the last N of those."""
    n = len(ds.train) if limit <= 0 else min(limit, len(ds.train))
    if val_size >= n:
        raise UserError(f"data.val_size={val_size} leaves no training images out of {n}; lower it.")
    cut = n - val_size
    train = Split(ds.train.images[:cut], ds.train.labels[:cut])
    val = Split(ds.train.images[cut:n], ds.train.labels[cut:n]) if val_size > 0 else None
    return train, val


def check_config(cfg: C.Config, world: int) -> None:
    """Mistakes a run would only hit later, caught before anything is written: every numeric key is
    checked against its range here, so a bad value fails at start, not after an epoch."""
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
                    ("model.whiten_bias_epochs", cfg.model.whiten_bias_epochs)]}
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
    finetune.check_config(cfg, world)  # train.freeze / unfreeze_epochs / optim.layer_lr_decay


def build_model(cfg: C.Config, num_classes: int, device, world: int) -> torch.nn.Module:
    """The raw model on its device: the same initial weights on every rank (seeded alike; DDP broadcasts
    them too), then a per-rank RNG so that dropout/DropPath masks differ between ranks."""
    from accelerate.utils import set_seed

    from harness.models import create_model

    set_seed(cfg.run.seed)
    model = create_model(cfg.model.name, num_classes=num_classes).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.sync_bn and world > 1:
        from harness.training import syncbn

        model = syncbn.convert(model, device.type == "cuda")
    set_seed(cfg.run.seed, device_specific=True)  # seed + process index, for every RNG accelerate knows
    return model


def accum_divisor(batch: int, batches: int, grad_accum: int) -> int:
    """How many micro-batches the accumulation group of micro-batch `batch` (0-based, of `batches` in the
    epoch) holds: `grad_accum`, except a shorter last group, whose gradient is then still a mean."""
    group_start = batch - batch % grad_accum
    return min(grad_accum, batches - group_start)


def main(argv: list[str] | None = None) -> dict:
    # ---- config ------------------------------------------------------------------------------------
    cfg = parse_args(C.Config, argv, prog="harness.train")
    from accelerate import Accelerator
    from accelerate.utils import TorchDynamoPlugin, broadcast_object_list

    from harness.models import model_facts, save_weights

    # ---- accelerator: precision and compilation from the config and the launcher (they must agree),
    # topology from the launcher. The resolved values are what config.yaml records.
    cuda = torch.cuda.is_available()
    cfg.train.precision = resolve_precision(cfg.train.precision, cuda=cuda,
                                            bf16_supported=cuda and torch.cuda.is_bf16_supported())
    cfg.train.compile, dynamo_backend = resolve_compile(cfg.train.compile, cuda=cuda)
    dynamo = TorchDynamoPlugin(backend=dynamo_backend if cfg.train.compile else "no",
                               mode=cfg.train.compile_mode if cfg.train.compile else None)
    # cpu=True on a machine without CUDA: under a multi-process launcher accelerate then forms a gloo
    # process group (without it, each process silently trains alone as world size 1)
    accelerator = Accelerator(mixed_precision="no" if cfg.train.precision == "fp32" else cfg.train.precision,
                              cpu=not cuda, dynamo_plugin=dynamo, log_with="wandb" if cfg.run.wandb else None)
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    main_proc = accelerator.is_main_process
    check_config(cfg, world)
    run_dir = [cfg.run.dir or default_run_dir(cfg.model.name)]
    broadcast_object_list(run_dir)  # one directory for all ranks, even when rank clocks differ
    cfg.run.dir = run_dir = run_dir[0]
    run_dir = Path(run_dir)
    checkpoints = Checkpoints(run_dir, accelerator, keep=cfg.run.keep_checkpoints)
    if not cfg.train.resume and checkpoints.latest() is not None:  # never train over another run's checkpoints
        raise UserError(f"run.dir={run_dir} already holds a run (checkpoint {checkpoints.latest()}). Continue it "
                        f"with train.resume=auto, or choose a new run.dir.")
    lock, lock_error = None, [None]
    if main_proc:
        try:
            lock = RunLock(run_dir)  # held until this process ends: one training per run directory
        except UserError as e:
            lock_error = [str(e)]
    broadcast_object_list(lock_error)  # every rank stops, not only the one that found the lock taken
    if lock_error[0]:
        raise UserError(lock_error[0])
    if main_proc:
        (run_dir / "config.yaml").write_text(C.to_yaml(cfg))
        record_provenance(run_dir / "provenance.json", provenance(world, device))
    # fixed 32x32 shapes: let cuDNN pick the fastest convolution algorithms once, at the first steps
    torch.backends.cudnn.benchmark = True

    # ---- data: each rank renders its slice of every global batch of one shared plan ---------------
    ds = select_classes(load_data(cfg, accelerator), cfg.data.classes)  # data.classes: a subset, relabelled 0..k-1
    num_classes = cfg.model.num_classes or ds.num_classes
    train_split, val_split = split_train_val(ds, cfg.data.limit_train, cfg.data.val_size)
    backend = resolve_backend(cfg.data.backend, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision, torch.float32)
    common = dict(rank=rank, world=world, seed=cfg.run.seed, device=device, dtype=dtype,
                  channels_last=cfg.train.channels_last)
    augment = Augment(enabled=cfg.data.augment, padding=cfg.data.crop_padding, flip=cfg.data.flip,
                      cutout=cfg.data.cutout, flip_mode=cfg.data.flip_mode, pad_mode=cfg.data.pad_mode)
    per_rank_batch = cfg.train.batch_size // world
    train_loader = build_loader(backend, train_split.images, train_split.labels, per_rank_batch, train=True,
                                drop_last=cfg.data.drop_last, augment=augment, num_classes=num_classes,
                                synthetic_size=cfg.data.synthetic_size, prefetch=cfg.data.prefetch, **common)
    eval_backend = "torch" if backend == "synthetic" else backend
    eval_batch = max(1, cfg.train.eval_batch_size // world)
    eval_loaders = {name: build_loader(eval_backend, s.images, s.labels, eval_batch, train=False, **common)
                    for name, s in (("val", val_split), ("test", ds.test)) if s is not None}
    steps_per_epoch = math.ceil(len(train_loader) / cfg.train.grad_accum)  # optimiser steps per epoch

    # ---- model, EMA, optimiser: the raw model is kept for EMA and for saving ----------------------
    raw_model = build_model(cfg, num_classes, device, world)
    init_note = finetune.apply_init(raw_model, cfg.model.init_from)  # model.init_from: says which keys loaded
    if init_note:
        accelerator.print(init_note)
    # speed option (docs/speed.md): the first conv whitened from the training images and frozen, before the
    # optimiser sees what trains; its time counts as training time (summary time_s), as in airbench
    setup_s, whitened = 0.0, None
    if cfg.model.whiten:
        t0 = time.perf_counter()
        whitened = init_whitening(raw_model, train_split.images, cfg.model.whiten_eps, cfg.model.whiten_images)
        setup_s = time.perf_counter() - t0
    ema = EMA(raw_model, cfg.train.ema) if cfg.train.ema > 0 else None
    lookahead = Lookahead(raw_model, cfg.train.lookahead_every, cfg.train.lookahead_decay) \
        if cfg.train.lookahead_every else None  # speed option: slow weights every k steps (harness/training/lookahead.py)
    peak_lr = scaled_lr(cfg)
    optimizer = build_optimizer(raw_model, cfg.optim, peak_lr, batch_ratio(cfg))
    if whitened is not None and whitened.bias is not None and cfg.model.whiten_bias_epochs > 0:
        limit_steps(optimizer, whitened.bias,  # speed option: the whitening bias trains early only
                    round(cfg.model.whiten_bias_epochs * steps_per_epoch))
    optimizer = finetune.stage_lr_groups(optimizer, raw_model, cfg.optim)  # optim.layer_lr_decay: lr_scale per stage
    freezer = finetune.Freezer(raw_model, cfg.train) if cfg.train.freeze != "none" else None
    if freezer is not None:
        freezer.apply(0)  # before prepare: DDP registers the parameters that require grad now

    # ---- compile + DDP (accelerate wraps DDP first, then compiles) --------------------------------------
    model, optimizer = accelerator.prepare(raw_model, optimizer)
    checkpoints.attach(raw_model)  # checkpoints hold the raw model's own state dict
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    if lookahead is not None:
        accelerator.register_for_checkpointing(lookahead)
    resume_from = resolve_resume(cfg.train.resume, checkpoints)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))  # weights, optimiser, RNG states, TrainState, EMA
        accelerator.print(f"resumed from {resume_from} at epoch {state.epoch + 1}, batch {state.batch}, "
                          f"step {state.step}")
    tracker = Tracker(run_dir, accelerator, cfg)  # metrics.jsonl, and the W&B run when run.wandb
    # train.log_grad_norms: per-layer gradient norms, summed on the device, read at log intervals
    grad_norms = gradflow.GradNorms(raw_model, run_dir / "grad_norms.jsonl", main_proc) if cfg.train.log_grad_norms else None
    if cfg.train.warmup_run:  # speed option: compile on throwaway steps, then restore (harness/training/warmup.py)
        warm_up(model, raw_model, optimizer, train_loader, accelerator, label_smoothing=cfg.train.label_smoothing)

    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    global_batch = per_rank_batch * world
    facts = model_facts(cfg.model.name, num_classes) if main_proc else {}
    if main_proc:
        accelerator.print(
            f"{cfg.model.name}: {facts['params'] / 1e6:.2f}M params, {facts['gflops']:.3f} GFLOPs/image | "
            f"{ds.name} {len(train_split)} train / {len(val_split) if val_split else 0} val / {len(ds.test)} test "
            f"from {ds.source} | backend {backend} | {world} x {device.type} | global batch {global_batch} x "
            f"{cfg.train.grad_accum} accum | lr {peak_lr:.4g} ({cfg.optim.lr_scaling} from {cfg.optim.lr} @ "
            f"{cfg.optim.ref_batch_size}) | {cfg.train.precision} channels_last={cfg.train.channels_last} "
            f"compile={cfg.train.compile} | run dir {run_dir}")

    # ---- loop ------------------------------------------------------------------------------------------
    stop = StopRequest(accelerator)
    stop_signal, results, saved_step = 0, {}, -1
    progress = Progress(total_steps, initial=state.step, unit="step", show=main_proc and cfg.run.progress)
    say = progress.write if main_proc else (lambda line: None)
    say(f"{'epoch':>5} {'step':>7} {'loss':>7} {'train':>6} {'val':>6} {'test':>6} {'lr':>8} {'img/s':>9} "
        f"{'epoch_s':>7}")
    start_wall = time.perf_counter()
    interval, epoch_meter = Meter(device), Meter(device)
    lr = lr_at(state.step, total_steps, warmup_steps, peak_lr, cfg.optim.schedule, cfg.optim.min_lr_ratio)
    should_stop = lambda: stop.poll() != 0  # noqa: E731  (asked between evaluation batches, on every rank)

    def evaluate_now() -> dict | None:
        """Evaluate, or None when a stop signal cut the evaluation short (resumed runs redo it)."""
        try:
            return evaluate_all(model, ema, eval_loaders, accelerator, num_classes, cfg, should_stop)
        except Interrupted:
            return None

    loss_fn = cross_entropy(cfg.train.label_smoothing)
    model.train()
    try:
        if state.pending_eval:  # stopped during the last evaluation: do it now, before training on
            results = evaluate_now()
            if results is None:
                stop_signal = stop.signum or signal.SIGTERM
            else:
                state.pending_eval = False
                _record_epoch(state, results, cfg, tracker, say, lr, float("nan"), None, 0.0, None)
        while (not stop_signal and state.epoch < cfg.train.epochs and state.step < total_steps
               and not target_reached(state, cfg)):
            train_loader.set_epoch(state.epoch)
            if freezer is not None:
                freezer.apply(state.epoch)  # train.freeze=gradual: stages thaw at train.unfreeze_epochs
            train_loader.load_state_dict({"epoch": state.epoch, "batch": state.batch})
            first_batch = state.batch
            # the throughput interval restarts with its clock: evaluation and checkpoints between epochs
            # are neither in its time nor in its image count
            interval.reset()
            epoch_meter.reset()
            epoch_t0 = last_t = time.perf_counter()
            last_step, data_s = state.step, 0.0
            batches = iter(train_loader)
            while True:
                t_data = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    break
                x, y = batch
                data_s += time.perf_counter() - t_data  # host time to produce the batch
                group = accum_divisor(state.batch, len(train_loader), cfg.train.grad_accum)
                sync = (state.batch + 1) % cfg.train.grad_accum == 0 or state.batch + 1 == len(train_loader)
                # micro-batches before the last of an accumulation group skip DDP's gradient all-reduce
                stats = train_step(model, x, y, accelerator, loss_fn, divisor=group, sync=sync)
                interval.add(stats, len(y))
                epoch_meter.add(stats, len(y))
                state.batch += 1
                if not sync:
                    continue
                lr = lr_at(state.step, total_steps, warmup_steps, peak_lr, cfg.optim.schedule, cfg.optim.min_lr_ratio)
                set_lr(optimizer, lr, state.step, peak_lr)  # every group at lr x its lr_scale (harness/training/optim.py)
                if grad_norms is not None:
                    grad_norms.accumulate()  # this step's gradients (all-reduced, before clipping), on the device
                optimizer_step(optimizer, model, accelerator, cfg.train.grad_clip)
                if ema is not None:
                    ema.update()
                state.step += 1
                if lookahead is not None:
                    lookahead.step(state.step, total_steps)
                progress.update(1)
                if state.step % cfg.run.log_every == 0 or state.step == total_steps:
                    loss_mean, acc, seen = interval.read(accelerator)  # the interval's one host sync
                    if not math.isfinite(loss_mean):
                        raise _nan_error(cfg, state, lr, checkpoints)
                    dt_s, steps = time.perf_counter() - last_t, state.step - last_step
                    row = {"kind": "step", "step": state.step, "epoch": state.epoch + state.batch / len(train_loader),
                           "loss": loss_mean, "train_acc": acc, "lr": lr,
                           "images_per_s": seen / dt_s, "images_per_s_per_device": seen / world / dt_s,
                           "step_ms": 1000 * dt_s / steps, "data_ms": 1000 * data_s / steps,
                           "peak_mem_mb": peak_memory_mb(device), "time_s": time.perf_counter() - start_wall}
                    tracker.log(row)
                    if grad_norms is not None:
                        grad_norms.log(state.step, row["epoch"])  # the interval's mean norm per layer
                    progress.update(0, loss=f"{loss_mean:.3f}", img_s=f"{row['images_per_s']:.0f}")
                    interval.reset()
                    last_step, last_t, data_s = state.step, time.perf_counter(), 0.0
                stop_signal = stop.poll()  # every step, never blocking: the verdict of one step ago
                if stop_signal or state.step >= total_steps:
                    break
            if device.type == "cuda":
                torch.cuda.synchronize()  # the epoch's clock stops when its GPU work is done
            epoch_s = time.perf_counter() - epoch_t0
            state.train_s += epoch_s
            loss_mean, train_acc, seen = epoch_meter.read(accelerator)
            if seen and not math.isfinite(loss_mean):
                raise _nan_error(cfg, state, lr, checkpoints)
            epoch_done = state.batch >= len(train_loader)
            if epoch_done:
                state.epoch_rates.append((state.batch - first_batch) * global_batch / epoch_s)
                state.epoch, state.batch = state.epoch + 1, 0
            finished = state.epoch >= cfg.train.epochs or state.step >= total_steps
            if stop_signal and not epoch_done:
                break
            if finished or (cfg.train.eval_every and state.epoch % cfg.train.eval_every == 0):
                results = evaluate_now()
                if results is None:  # a stop signal arrived during the evaluation
                    state.pending_eval, stop_signal = True, stop.signum or signal.SIGTERM
                    break
                _record_epoch(state, results, cfg, tracker, say, lr, loss_mean, train_acc, epoch_s,
                              state.epoch_rates[-1] if epoch_done else None)
            reached = target_reached(state, cfg)
            if finished or reached or (cfg.run.checkpoint_every and state.epoch % cfg.run.checkpoint_every == 0):
                checkpoints.save(state.step)
                saved_step = state.step
            if reached:
                say(f"target accuracy {cfg.train.target_acc} reached after {state.time_to_target_s:.1f} s of "
                    f"training: stopping")
            if stop_signal or reached:
                break
        if not stop_signal:
            stop_signal = stop.drain()  # a signal in the last step still gets its checkpoint and exit code
    except torch.OutOfMemoryError:
        raise UserError(
            f"out of memory on {device} with {per_rank_batch} images per process ({cfg.model.name}, "
            f"{cfg.train.precision}). Lower train.batch_size (now {cfg.train.batch_size}) and raise "
            f"train.grad_accum to keep the effective batch. Checkpoints in {checkpoints.dir} are intact.") from None
    finally:
        progress.close()

    if stop_signal:
        path = checkpoints.save(state.step) if saved_step != state.step or state.pending_eval else checkpoints.latest()
        say(f"stopped by signal {stop_signal} at epoch {state.epoch + 1}, batch {state.batch}: checkpoint {path}. "
            f"Resume with: train.resume=auto run.dir={run_dir}")
        tracker.close()
        accelerator.end_training()
        if lock:
            lock.release()
        raise SystemExit(128 + stop_signal)

    # ---- report --------------------------------------------------------------------------------------
    if not results:  # resumed a finished run: evaluate once more for the summary
        results = evaluate_all(model, ema, eval_loaders, accelerator, num_classes, cfg)
    wall_s = time.perf_counter() - start_wall
    # DDP's invariant, recorded in the summary: every rank ends with the same weights
    checksum = sum(p.detach().double().sum() + p.detach().double().square().sum() for p in raw_model.parameters())
    checksums = accelerator.gather(checksum.reshape(1).to(device)).tolist()
    if main_proc:  # the run's weights, plain: create_model(name) + load_state_dict, or harness.models.load_run
        meta = {"model": cfg.model.name, "num_classes": num_classes}
        save_weights(raw_model, run_dir / "model.safetensors", **meta)
        if ema is not None:
            save_weights(ema.module, run_dir / "ema.safetensors", **meta)
    rates = state.epoch_rates[1:] or state.epoch_rates  # epoch 1 holds compilation and autotuning
    summary = {
        "model": cfg.model.name, "dataset": ds.name, "params": facts.get("params"), "gflops": facts.get("gflops"),
        "test_acc": results["test"]["acc"], "test_images": results["test"]["n"],
        "val_acc": results["val"]["acc"] if "val" in results else None,
        "best_val_acc": state.best_val if state.best_val >= 0 else None,
        "best_val_epoch": state.best_epoch if state.best_epoch >= 0 else None,
        "test_acc_at_best_val": state.test_at_best,
        "per_class_test_acc": dict(zip(ds.classes, results["test"]["per_class"])),
        "wall_s": wall_s, "train_s": state.train_s,
        "time_s": state.train_s + setup_s,  # training alone: whitening + epochs (evaluation, compile warm-up out)
        "warmup_run": cfg.train.warmup_run,
        "train_images_per_s": sorted(rates)[len(rates) // 2] if rates else None,
        "train_images_per_s_per_device": (sorted(rates)[len(rates) // 2] / world) if rates else None,
        "world_size": world, "epochs": state.epoch, "steps": state.step, "global_batch": global_batch,
        "target_acc": cfg.train.target_acc or None, "time_to_target_s": state.time_to_target_s,
        "precision": cfg.train.precision, "channels_last": cfg.train.channels_last, "compile": cfg.train.compile,
        "backend": backend, "device": provenance(world, device)["devices"][0], "peak_mem_mb": peak_memory_mb(device),
        "param_checksums": checksums, "weights": "ema.safetensors" if ema is not None else "model.safetensors",
    }
    if main_proc:
        write_json(run_dir / "summary.json", summary)
        tracker.summary(summary)
        say(f"test accuracy {summary['test_acc']:.4f}"
            + (f" | val {summary['val_acc']:.4f}" if summary["val_acc"] is not None else "")
            + f" | {summary['train_images_per_s'] or 0:.0f} img/s | wall {wall_s:.1f} s | {run_dir / 'summary.json'}")
        per_class = "  ".join(f"{c}:{a:.3f}" for c, a in list(summary["per_class_test_acc"].items())[:20])
        say(f"per-class test accuracy: {per_class}")
    tracker.close()
    accelerator.end_training()
    if lock:
        lock.release()
    return summary


class Meter:
    """Running loss and accuracy: sums stay on the device, the sample count in Python (a tensor made from
    a host number each step would be a host-to-device copy that waits for the GPU); `read()` syncs."""

    def __init__(self, device):
        self.sums = torch.zeros(2, device=device, dtype=torch.float64)  # loss x samples, correct
        self.n = 0

    def add(self, stats: torch.Tensor, n: int) -> None:
        self.sums += stats
        self.n += n

    def read(self, accelerator) -> tuple[float, float, int]:
        """Loss, accuracy and sample count summed over all ranks (a collective: call on every rank)."""
        count = torch.full((1,), float(self.n), device=self.sums.device, dtype=torch.float64)
        loss, correct, n = accelerator.reduce(torch.cat([self.sums, count]), "sum").tolist()
        return (loss / n, correct / n, int(n)) if n else (0.0, 0.0, 0)

    def reset(self) -> None:
        self.sums.zero_()
        self.n = 0


def target_reached(state: TrainState, cfg: C.Config) -> bool:
    return bool(cfg.train.target_acc) and state.time_to_target_s is not None


def _record_epoch(state, results, cfg, tracker, say, lr, train_loss, train_acc, epoch_s, images_per_s) -> None:
    val, test = results.get("val"), results["test"]
    if val is not None and val["acc"] > state.best_val:  # model selection on validation, never on test
        state.best_val, state.best_epoch, state.test_at_best = val["acc"], state.epoch, test["acc"]
    chosen = val or test
    if cfg.train.target_acc and state.time_to_target_s is None and chosen["acc"] >= cfg.train.target_acc:
        state.time_to_target_s = state.train_s  # training time only: evaluation is outside the clock
    row = {"kind": "epoch", "epoch": state.epoch, "step": state.step, "train_loss": train_loss,
           "train_acc": train_acc, "test_acc": test["acc"], "test_loss": test["loss"], "lr": lr,
           "epoch_s": epoch_s, "images_per_s": images_per_s, "train_s": state.train_s}
    if val is not None:
        row.update(val_acc=val["acc"], val_loss=val["loss"])
    tracker.log(row)
    fmt = lambda v: f"{v:6.4f}" if v is not None and math.isfinite(v) else "     -"  # noqa: E731
    say(f"{state.epoch:>5} {state.step:>7} {train_loss:7.4f} {fmt(train_acc)} {fmt(val and val['acc'])} "
        f"{fmt(test['acc'])} {lr:8.5f} {images_per_s or 0:9.0f} {epoch_s:7.1f}")


def _nan_error(cfg, state, lr, checkpoints) -> UserError:
    last = checkpoints.latest()
    return UserError(
        f"the training loss became NaN or infinite by step {state.step} (lr {lr:.4g}). Lower optim.lr (now "
        f"{cfg.optim.lr}), add warm-up (optim.warmup_epochs=1) or clipping (train.grad_clip=1.0), or use "
        f"train.precision=fp32. No checkpoint was written after it; "
        + (f"the last good one is {last} (train.resume=auto continues from it)." if last else "there is none yet."))


def cli() -> None:
    def run():
        argv = sys.argv[1:]
        cfg = parse_args(C.Config, argv, prog="harness.train")  # --help exits here
        if cfg.train.repeats > 1:  # N seeds around main(): harness/training/repeats.py
            from harness.training.repeats import run_repeats

            return run_repeats(main, argv, cfg, Path(cfg.run.dir or default_run_dir(cfg.model.name)))
        return main(argv)

    run_cli(run)


if __name__ == "__main__":
    cli()
