"""Train a zoo model on CIFAR: `accelerate launch harness/train.py [--config configs/X.yaml] [key=value ...]`.

Also `python -m harness.train ...` (one process). With no arguments: resnet18 on CIFAR-10 with the seeds'
recipe (SGD 0.1 momentum 0.9 wd 5e-4 at batch 128, cosine, crop+flip, 20 epochs), channels_last, and
precision/compile `auto` (bf16 + torch.compile on a GPU, or what the launcher names). `--help` lists every
key with its description.

main() reads top to bottom: config -> accelerator -> data -> model -> optimiser -> prepare -> resume -> loop
-> finish. Accelerate owns distribution (DDP over any number of processes and nodes), mixed precision (bf16
autocast; fp16 with its gradient scaler) and compilation (its dynamo plugin compiles the DDP-wrapped model);
the config and the launcher must agree on the last two (harness/training/precision.py). The loop itself is
plain PyTorch: a pure `lr_at(step)`, `.item()` only at log intervals, evaluation outside the timed region.
What it calls lives in two rooms (docs/architecture.md): harness/training/ knows the maths of one run
(the step, the optimiser, EMA, Lookahead, evaluation, the speed recipe's options, the config checks),
harness/run/ knows the files a run leaves and what makes it safe to kill (the run directory, checkpoints,
stopping on a signal, the tracker and the metrics schema). This file is where the two meet.

N processes follow the 1-process trajectory at the same global batch: the data plan depends only on
(seed, epoch, position in the global batch), DDP averages the gradients, and the weights start identical;
the model's own (raw) module is kept beside the DDP/compiled wrapper for EMA and for saving.
"""
from __future__ import annotations

import contextlib
import functools
import math
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: put the repo root, not harness/, first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from dataclasses import dataclass  # after the line above: it imports `inspect`, which harness/ also has

import torch

from harness import config as C
from harness.cli import parse_args, run_cli
from harness.console import Progress
from harness.data.cifar import Dataset, Split, attach_test_subset, load_dataset, random_split, select_classes
from harness.data.loaders import Augment, build_loader, resolve_backend
from harness.errors import UserError, agreed
from harness.provenance import device_names, peak_memory_mb
from harness.run import metrics
from harness.run.directory import RunDirectory, default_run_dir
from harness.run.stop import StopRequest
from harness.run.tracker import wandb_importable
from harness.training import finetune
from harness.training.checks import check_config, check_split
from harness.training.ema import EMA
from harness.training.evaluate import evaluate_all, subset_flags, warm_up_evaluation
from harness.training.freeze import Freezer
from harness.training.gradflow import GradNorms
from harness.training.lookahead import Lookahead
from harness.training.optim import Schedule, batch_ratio, build_optimizer, scaled_lr
from harness.training.precision import make_accelerator
from harness.training.state import Meter, TrainState, timed
from harness.training.step import accum_divisor, cross_entropy, ends_group, optimizer_step, train_step
from harness.training.warmup import warm_up
from harness.training.whiten import bias_step_limit, init_whitening


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(C.Config, argv, prog="harness.train")
    cfg.run.wandb = cfg.run.wandb and wandb_importable()  # without wandb: tracking off, one warning line
    accelerator = make_accelerator(cfg)  # precision and compile from the config and the launcher, into cfg
    world, device, main_proc = accelerator.num_processes, accelerator.device, accelerator.is_main_process
    check_config(cfg, world)  # every key in range before anything is written
    torch.backends.cudnn.benchmark = True  # fixed 32x32 shapes: cuDNN picks its fastest convolutions once
    # the lock and the resume's recipe check; leaving it tears down. Out of memory anywhere: one line, the fix
    with RunDirectory(cfg, accelerator) as run, out_of_memory_advice(cfg, accelerator, run.checkpoints.dir):
        # ---- data: each rank renders its slice of every global batch of one shared plan
        data = build_data(cfg, accelerator)

        # ---- model: the raw model is kept beside the DDP/compiled wrapper, for EMA, Lookahead and saving
        raw_model = build_model(cfg, data.num_classes, device, world)
        if init_note := finetune.apply_init(raw_model, cfg.model.init_from):  # model.init_from: which keys loaded
            accelerator.print(init_note)
        whitened, setup_s = whiten(cfg, raw_model, data)  # speed option: the first conv whitened and frozen
        ema = EMA(raw_model, cfg.train.ema) if cfg.train.ema > 0 else None
        lookahead = Lookahead(raw_model, cfg.train.lookahead_every, cfg.train.lookahead_decay) \
            if cfg.train.lookahead_every else None  # speed option: slow weights every k steps

        # ---- optimiser: every group built once, with its lr scale, step limit and kind
        peak_lr = scaled_lr(cfg)
        optimizer = build_optimizer(raw_model, cfg.optim, peak_lr, batch_ratio(cfg), step_limits=bias_step_limit(
            whitened, cfg.model.whiten_bias_epochs, data.steps_per_epoch))  # the whitening bias trains early only
        freezer = Freezer(raw_model, cfg.train) if cfg.train.freeze != "none" else None
        if freezer is not None:
            freezer.apply(0)  # before prepare: DDP registers the parameters that require grad now

        # ---- prepare (DDP, then compile) and resume
        model, optimizer = accelerator.prepare(raw_model, optimizer)
        state = TrainState()
        if resumed := run.start(raw_model, [state, ema, lookahead]):  # then config.yaml, provenance, tracker
            accelerator.print(f"resumed from {resumed} at epoch {state.epoch + 1}, batch {state.batch}, "
                              f"step {state.step}")
        keep_best = functools.partial(run.save_weights, raw_model, ema.module if ema is not None else None,
                                      which="best", model=cfg.model.name, num_classes=data.num_classes)
        # train.log_grad_norms: per-layer gradient norms, summed on the device, read at log intervals
        grad_norms = GradNorms(raw_model) if cfg.train.log_grad_norms else None
        if cfg.train.warmup_run:  # speed option: compile on throwaway steps, then restore
            warm_up(model, raw_model, optimizer, data.train_loader, accelerator, label_smoothing=cfg.train.label_smoothing)
            warm_up_evaluation(model, ema, data.eval_loaders, accelerator, cfg.train.tta)  # the final eval is timed
        schedule = Schedule.of(cfg, peak_lr, data.steps_per_epoch)
        facts = describe(cfg, data, accelerator, peak_lr, run.path)

        # ---- loop
        stop = StopRequest(accelerator)
        evaluate = functools.partial(evaluate_all, model, ema, data.eval_loaders, accelerator, data.num_classes,
                                     cfg.train.tta, subsets=data.eval_subsets, progress=main_proc and cfg.run.progress)
        # every split, or None when a stop signal (asked between evaluation batches, on every rank) cut it short
        evaluate_now = functools.partial(evaluate, should_stop=lambda: stop.poll() != 0)
        loss_fn = cross_entropy(cfg.train.label_smoothing)
        batches, interval, epoch_meter = len(data.train_loader), Meter(device), Meter(device)
        # the step of the last checkpoint written or loaded: a stop never saves the same step again
        stop_signal, results, saved_step, lr = 0, {}, state.step if resumed else -1, schedule(state.step)
        start_wall = time.perf_counter()
        with Progress(schedule.total, initial=state.step, unit="step", show=main_proc and cfg.run.progress) as progress:
            say = progress.write if main_proc else (lambda line: None)
            say(metrics.CONSOLE_HEADER)
            model.train()
            if state.pending_eval:  # stopped during the last evaluation: do it now, before training on
                if (results := evaluate_now()) is None:
                    stop_signal = stop.signum or signal.SIGTERM
                else:
                    state.pending_eval = False
                    record_epoch(run, say, state, results, cfg, lr, float("nan"), None, 0.0, None, keep_best)
            while (not stop_signal and state.epoch < cfg.train.epochs and state.step < schedule.total
                   and not state.target_reached(cfg.train.target_acc)):
                data.train_loader.set_epoch(state.epoch)
                if freezer is not None:
                    freezer.apply(state.epoch)  # train.freeze=gradual: stages thaw at train.unfreeze_epochs
                data.train_loader.load_state_dict({"epoch": state.epoch, "batch": state.batch})
                first_batch = state.batch
                # the throughput interval restarts with its clock: evaluation and checkpoints between epochs
                # are neither in its time nor in its image count
                interval.reset(state.step)
                epoch_meter.reset(state.step)
                for (x, y), data_s in timed(data.train_loader):
                    sync = ends_group(state.batch, batches, cfg.train.grad_accum)
                    # micro-batches before the last of an accumulation group skip DDP's gradient all-reduce
                    stats = train_step(model, x, y, accelerator, loss_fn,
                                       divisor=accum_divisor(state.batch, batches, cfg.train.grad_accum), sync=sync)
                    interval.add(stats, len(y), data_s)
                    epoch_meter.add(stats, len(y))
                    state.batch += 1
                    if not sync:
                        continue
                    lr = schedule.apply(optimizer, state.step)  # every group at lr x its lr_scale
                    if grad_norms is not None:
                        grad_norms.accumulate()  # this step's gradients (all-reduced, before clipping), on the device
                    optimizer_step(optimizer, model, accelerator, cfg.train.grad_clip)
                    if ema is not None:
                        ema.update()
                    state.step += 1
                    if lookahead is not None:
                        lookahead.step(state.step, schedule.total)
                    progress.update(1)
                    if state.step % cfg.run.log_every == 0 or state.step == schedule.total:
                        row = interval_row(interval, accelerator, state, lr, batches, start_wall)  # one host sync
                        if not math.isfinite(row["loss"]):
                            raise nan_error(cfg, state, lr, run.checkpoints.latest())
                        run.tracker.log(row)
                        if grad_norms is not None:  # the interval's mean norm per layer: grad_norms.jsonl
                            run.tracker.log_grad_norms(grad_norms.row(state.step, row["epoch"]))
                        progress.update(0, loss=f"{row['loss']:.3f}", img_s=f"{row['images_per_s']:.0f}")
                        interval.reset(state.step)
                    stop_signal = stop.poll()  # every step, never blocking: the verdict of one step ago
                    if stop_signal or state.step >= schedule.total:
                        break
                epoch_s = epoch_meter.seconds(synchronize=True)  # the epoch's clock stops when its GPU work is done
                state.train_s += epoch_s
                train_loss, train_acc, seen = epoch_meter.read(accelerator)
                if seen and not math.isfinite(train_loss):
                    raise nan_error(cfg, state, lr, run.checkpoints.latest())
                epoch_done = state.batch >= batches
                if epoch_done:
                    state.epoch_rates.append((state.batch - first_batch) * data.global_batch / epoch_s)
                    state.epoch, state.batch = state.epoch + 1, 0
                finished = state.epoch >= cfg.train.epochs or state.step >= schedule.total
                evaluation_due = finished or (cfg.train.eval_every and state.epoch % cfg.train.eval_every == 0)
                if stop_signal:  # the checkpoint now; the evaluation a finished epoch owes runs first on resume
                    state.pending_eval = bool(epoch_done and evaluation_due)
                    break
                if evaluation_due:
                    results = evaluate_now()
                    if results is None:  # a stop signal arrived during the evaluation
                        state.pending_eval, stop_signal = True, stop.signum or signal.SIGTERM
                        break
                    record_epoch(run, say, state, results, cfg, lr, train_loss, train_acc, epoch_s,
                                 state.epoch_rates[-1] if epoch_done else None, keep_best)
                reached = state.target_reached(cfg.train.target_acc)
                if finished or reached or (cfg.run.checkpoint_every and state.epoch % cfg.run.checkpoint_every == 0):
                    run.checkpoints.save(state.step)
                    saved_step = state.step
                if reached:
                    say(f"target accuracy {cfg.train.target_acc} reached after {state.time_to_target_s:.1f} s of "
                        f"training: stopping")
                if stop_signal or reached:
                    break
            if not stop_signal:
                stop_signal = stop.drain()  # a signal in the last step still gets its checkpoint and exit code

        if stop_signal:  # checkpointed, then the exit code a scheduler reads (143 for SIGTERM); `run` tears down
            stopped(run, state, stop_signal, saved_step, say)

        # ---- finish: the last evaluation, the weights, the summary
        results = results or evaluate()  # a resumed finished run: evaluate once more for the summary
        wall_s = time.perf_counter() - start_wall
        return finish(run, cfg, data, state, results, raw_model, ema, facts, setup_s, wall_s, say)


@dataclass
class RunData:
    """What `build_data` hands the run: the splits, the loaders and the batch arithmetic."""

    dataset: Dataset  # name, class names, the test split, where it was read from
    train: Split
    val: Split | None
    test: Split  # the test images evaluated (the first train.eval_limit of them in a smoke run)
    num_classes: int
    backend: str
    train_loader: object
    eval_loaders: dict  # 'val' (with data.val_size), 'test'
    eval_subsets: dict  # 'test' with data.test_subset: its images' flags in the test loader's order
    per_rank_batch: int
    global_batch: int
    steps_per_epoch: int  # optimiser steps: micro-batches / train.grad_accum, rounded up


def load_data(cfg: C.Config, accelerator) -> Dataset:
    if cfg.data.backend == "synthetic":  # no files: random images, for benchmarks
        n = cfg.data.synthetic_size
        k = 10 if cfg.data.dataset == "cifar10" else 100
        return Dataset(cfg.data.dataset, random_split(n, k, cfg.run.seed), random_split(1000, k, cfg.run.seed + 1),
                       k, [str(i) for i in range(k)], "synthetic")
    # one process per node reads first, downloading if needed (data.root may be node-local); the others then
    # read its files. A data error on any rank stops every rank here, said once (harness.errors.agreed)
    def read(first: bool) -> Dataset | None:  # the node's first process in the first round, the others next
        if accelerator.is_local_main_process != first:
            return None
        return load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.format, cfg.data.verify, cfg.data.download)
    first, later = agreed(accelerator, lambda: read(True)), agreed(accelerator, lambda: read(False))
    return first if first is not None else later


def split_train_val(ds: Dataset, n: int, val_size: int) -> tuple[Split, Split | None]:
    """The first `n` training images (data.limit_train's, checks.check_split); data.val_size holds out the
    last N of those."""
    cut = n - val_size
    train = Split(ds.train.images[:cut], ds.train.labels[:cut])
    val = Split(ds.train.images[cut:n], ds.train.labels[cut:n]) if val_size > 0 else None
    return train, val


def build_data(cfg: C.Config, accelerator) -> RunData:
    """The data set, its training/validation split and this rank's loaders."""
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    ds = attach_test_subset(load_data(cfg, accelerator), cfg.data.test_subset, cfg.data.root)  # test_exact.json
    ds = select_classes(ds, cfg.data.classes)  # data.classes: a subset, relabelled 0..k-1
    train, val = split_train_val(ds, check_split(len(ds.train), cfg.data), cfg.data.val_size)
    test = ds.test.first(cfg.train.eval_limit)  # train.eval_limit: smoke runs
    val = val.first(cfg.train.eval_limit) if val is not None else None
    num_classes = cfg.model.num_classes or ds.num_classes
    backend = resolve_backend(cfg.data.backend, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision, torch.float32)
    common = dict(rank=rank, world=world, seed=cfg.run.seed, device=device, dtype=dtype,
                  channels_last=cfg.train.channels_last)
    augment = Augment.from_config(cfg.data)  # every data.* augmentation option, mixing included
    per_rank_batch = cfg.train.batch_size // world
    train_loader = build_loader(backend, train.images, train.labels, per_rank_batch, train=True,
                                drop_last=cfg.data.drop_last, augment=augment, num_classes=num_classes,
                                synthetic_size=cfg.data.synthetic_size, prefetch=cfg.data.prefetch,
                                epochs=cfg.train.epochs, **common)  # no plan is built past the last epoch
    eval_backend = "torch" if backend == "synthetic" else backend
    eval_batch = max(1, cfg.train.eval_batch_size // world)
    eval_loaders = {name: build_loader(eval_backend, s.images, s.labels, eval_batch, train=False, **common)
                    for name, s in (("val", val), ("test", test)) if s is not None}
    eval_subsets = {} if ds.test_subset is None else \
        {"test": subset_flags(eval_loaders["test"], ds.test_subset[:len(test)])}
    return RunData(ds, train, val, test, num_classes, backend, train_loader, eval_loaders, eval_subsets, per_rank_batch,
                   per_rank_batch * world, math.ceil(len(train_loader) / cfg.train.grad_accum))


def build_model(cfg: C.Config, num_classes: int, device, world: int) -> torch.nn.Module:
    """The raw model on its device: the same initial weights on every rank (seeded alike; DDP broadcasts
    them too), then a per-rank RNG so that dropout and stochastic-depth masks differ between ranks."""
    from accelerate.utils import set_seed

    from harness.models import create_model

    set_seed(cfg.run.seed)
    model = create_model(cfg.model.name, num_classes=num_classes, drop_path=cfg.model.drop_path).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.sync_bn and world > 1:
        from harness.training import syncbn

        model = syncbn.convert(model, device.type == "cuda")
    set_seed(cfg.run.seed, device_specific=True)  # seed + process index, for every RNG accelerate knows
    return model


def describe(cfg: C.Config, data: RunData, accelerator, peak_lr: float, run_dir: Path) -> dict:
    """The run in one line on the console (main process); returns the model's params and GFLOPs there."""
    from harness.models import model_facts

    if not accelerator.is_main_process:
        return {}
    facts = model_facts(cfg.model.name, data.num_classes)
    accelerator.print(
        f"{cfg.model.name}: {facts['params'] / 1e6:.2f}M params, {facts['gflops']:.3f} GFLOPs/image | "
        f"{data.dataset.name} {len(data.train)} train / {len(data.val) if data.val else 0} val / "
        f"{test_count(cfg, data)} from {data.dataset.source} | backend {data.backend} | "
        f"{accelerator.num_processes} x {accelerator.device.type} | global batch {data.global_batch} x "
        f"{cfg.train.grad_accum} accum | lr {peak_lr:.4g} ({cfg.optim.lr_scaling} from {cfg.optim.lr} @ "
        f"{cfg.optim.ref_batch_size}) | {cfg.train.precision} channels_last={cfg.train.channels_last} "
        f"compile={cfg.train.compile} | run dir {run_dir}")
    return facts


def test_count(cfg: C.Config, data: RunData) -> str:
    """'10000 test', '500 test (train.eval_limit)', then ' (1000 in test_exact.json)' with data.test_subset."""
    n = len(data.test)
    text = f"{n} test" + (" (train.eval_limit)" if cfg.train.eval_limit > 0 else "")
    if data.dataset.test_subset is not None:
        text += f" ({int(data.dataset.test_subset[:n].sum())} in {Path(data.dataset.test_subset_name).name})"
    return text


def interval_row(interval: Meter, accelerator, state: TrainState, lr: float, batches: int, start_wall: float) -> dict:
    """The step row of the log interval `interval` has measured (reads it: a collective, every rank)."""
    loss, acc, seen = interval.read(accelerator)
    return metrics.step_row(state.step, state.epoch + state.batch / batches, loss, acc, lr, seen, interval.seconds(),
                            state.step - interval.step0, interval.data_s, accelerator.num_processes,
                            peak_memory_mb(accelerator.device), time.perf_counter() - start_wall)


def record_epoch(run: RunDirectory, say, state: TrainState, results: dict, cfg: C.Config, lr: float,
                 train_loss: float, train_acc: float | None, epoch_s: float, images_per_s: float | None,
                 keep_best) -> None:
    """An evaluation's results: model selection and time to target (TrainState), the best epoch's weights
    (`keep_best`), then the epoch row (metrics.jsonl, W&B, the console)."""
    best = state.best_epoch
    state.record(results, cfg.train.target_acc)
    if state.best_epoch != best:  # a new best on validation
        keep_best(epoch=state.epoch, step=state.step, val_acc=results["val"]["acc"])
    row = metrics.epoch_row(state.epoch, state.step, train_loss, train_acc, results, lr, epoch_s, images_per_s,
                            state.train_s)
    run.tracker.log(row)
    say(metrics.console_line(row))


def whiten(cfg: C.Config, raw_model: torch.nn.Module, data: RunData) -> tuple[torch.nn.Conv2d | None, float]:
    """model.whiten: the first conv whitened from the training images (on the device) and frozen, and the
    seconds it took, which count as training time (summary time_s), as airbench's do. (None, 0) when off."""
    if not cfg.model.whiten:
        return None, 0.0
    t0 = time.perf_counter()
    conv = init_whitening(raw_model, data.train.images, cfg.model.whiten_eps, cfg.model.whiten_images)
    return conv, time.perf_counter() - t0


def stopped(run: RunDirectory, state: TrainState, signum: int, saved_step: int, say) -> None:
    """A stop signal ended the loop: checkpoint (unless the last save is this step's and complete), say how
    to resume, and leave with the exit code a scheduler reads (128 + the signal: 143 for SIGTERM)."""
    path = run.checkpoints.save(state.step) if saved_step != state.step else run.checkpoints.latest()
    say(f"stopped by signal {signum} at epoch {state.epoch + 1}, batch {state.batch}: checkpoint {path}. "
        f"Resume with: train.resume=auto run.dir={run.path}")
    raise SystemExit(128 + signum)


def finish(run: RunDirectory, cfg: C.Config, data: RunData, state: TrainState, results: dict, raw_model, ema,
           facts: dict, setup_s: float, wall_s: float, say) -> dict:
    """The run's record: its weights, summary.json (and the W&B summary), and the summary on the console."""
    accelerator = run.acc
    checksums = param_checksums(raw_model, accelerator)  # recorded: every rank ends with the same weights
    run.save_weights(raw_model, ema.module if ema is not None else None, model=cfg.model.name,
                     num_classes=data.num_classes)
    summary = metrics.summary(cfg, state, results, dataset=data.dataset.name, classes=data.dataset.classes,
                              facts=facts, wall_s=wall_s, setup_s=setup_s, world=accelerator.num_processes,
                              global_batch=data.global_batch, backend=data.backend, device=device_names()[0],
                              peak_mem_mb=peak_memory_mb(accelerator.device), checksums=checksums,
                              ema=ema is not None, test_subset=data.dataset.test_subset_name)
    for line in metrics.summary_lines(summary, run.write_summary(summary)):
        say(line)
    return summary


def param_checksums(model: torch.nn.Module, accelerator) -> list[float]:
    """One number per rank summarising its weights (sum and sum of squares, in float64): DDP's invariant is
    that they are all equal."""
    checksum = sum(p.detach().double().sum() + p.detach().double().square().sum() for p in model.parameters())
    return accelerator.gather(checksum.reshape(1).to(accelerator.device)).tolist()


def nan_error(cfg: C.Config, state: TrainState, lr: float, last: Path | None) -> UserError:
    return UserError(
        f"the training loss became NaN or infinite by step {state.step} (lr {lr:.4g}). Lower optim.lr (now "
        f"{cfg.optim.lr}), add warm-up (optim.warmup_epochs=1) or clipping (train.grad_clip=1.0), or use "
        f"train.precision=fp32. No checkpoint was written after it; "
        + (f"the last good one is {last} (train.resume=auto continues from it)." if last else "there is none yet."))


@contextlib.contextmanager
def out_of_memory_advice(cfg: C.Config, accelerator, checkpoints_dir: Path):
    """An out-of-memory error inside becomes one line naming the batch and the fix."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise UserError(
            f"out of memory on {accelerator.device} with {cfg.train.batch_size // accelerator.num_processes} "
            f"images per process ({cfg.model.name}, "
            f"{cfg.train.precision}). Lower train.batch_size (now {cfg.train.batch_size}) and raise "
            f"train.grad_accum to keep the effective batch. Checkpoints in {checkpoints_dir} are intact.") from None


def cli() -> None:
    def run():
        argv = sys.argv[1:]
        cfg = parse_args(C.Config, argv, prog="harness.train")  # --help exits here
        with process_group():
            if cfg.train.repeats > 1:  # N seeds around main(): harness/training/repeats.py
                from harness.training.repeats import run_repeats

                return run_repeats(main, argv, cfg, Path(cfg.run.dir or default_run_dir(cfg.model.name)))
            return main(argv)

    run_cli(run)


@contextlib.contextmanager
def process_group():
    """Ends the process group accelerate started, once per job: after the last of train.repeats' runs (each
    run's Accelerator reuses the group; ending it after a run made the next one fail on every rank), on
    success or a stop request (SystemExit); not on an error, where another rank may still wait in a
    collective."""
    from accelerate import PartialState

    try:
        yield
    except SystemExit:
        PartialState().destroy_process_group()
        raise
    PartialState().destroy_process_group()


if __name__ == "__main__":
    cli()
