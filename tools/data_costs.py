"""The CPU measurements quoted in docs/data_pipeline.md and docs/training.md, rerunnable: one command each.

    PYTHONPATH=. python tools/data_costs.py plans      # the plan at an epoch boundary, per strategy
    PYTHONPATH=. python tools/data_costs.py cache      # a repeat's data set and padded splits, cached or not
    PYTHONPATH=. python tools/data_costs.py options    # the torch backend's cost per batch of each data option
    PYTHONPATH=. python tools/data_costs.py drop_path  # stochastic depth: convnext's step, and the op alone

Each prints its settings, the machine (cores, load average), the versions and the commit, then markdown
tables of median (min-max) over n repeats, each repeat after untimed warm-up and the compared variants
alternating in rotating order round by round (a shared machine's speed drifts; alternation spreads the
drift over every variant alike). One torch thread (`OMP_NUM_THREADS=1` too). These are CPU figures, not a
GPU measurement; `python -m harness.bench` measures the loaders and models on any device. Written as a
script, not part of `harness`: nothing imports it.
"""
from __future__ import annotations

import hashlib
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.cli import parse_args, run_cli
from harness.data.cache import CACHE
from harness.data.interface import EpochPlan, make_plan
from harness.data.loaders import Augment, build_loader, dali_available
from harness.errors import UserError
from harness.provenance import git_sha, library_versions
from harness.stats import format_median, summarize


@dataclass
class CostOptions:
    what: str = "plans"  # plans, cache, options or drop_path (the bare word)
    rounds: int = 5  # timed rounds; every variant runs once per round, in rotating order
    # plans: a TorchLoader over `images` random images, batch `batch_size`, `epochs` epochs of `batches`
    # rendered batches (the work the builder thread overlaps)
    images: int = 50000
    batch_size: int = 512
    epochs: int = 6
    batches: int = 3
    root: str = "data"  # cache: where CIFAR-10's binary files are
    option_batch: int = 128  # options: images per batch
    option_batches: int = 8  # options: batches per round and variant
    drop_batch: int = 16  # drop_path: convnext's batch


def ms(values: list[float]) -> str:
    return format_median(summarize([v * 1e3 for v in values]), ",.2f")


def header(o: CostOptions) -> None:
    v = library_versions()
    print(f"CPU, not a GPU measurement: {platform.machine()}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; Python {v['python']}, torch {v.get('torch')}, "
          f"torchvision {v.get('torchvision')}; commit {git_sha()}; {torch.get_num_threads()} torch thread")
    print(f"settings: {o}\n")


def plan_bytes(plan: EpochPlan | None) -> int:
    if plan is None:
        return 0
    return sum(getattr(plan, f).nbytes for f in EpochPlan.RENDER + EpochPlan.MIX
               if getattr(plan, f) is not None) + plan_bytes(plan.partner)


def plans(o: CostOptions) -> None:
    """The wait at each epoch boundary (set_epoch + plan() + device_plan(), what the epoch's first batch
    waits for) and the time before the first step (the loader, and any plan built up front), for: a plan
    built per epoch at the boundary, every epoch's plan built up front, and the next epoch's built ahead on
    a thread (the loader as it is; and with the thread started at the boundary instead of after the first
    batch). Also a plan's size and, with DALI, turning a plan into its host arrays."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (o.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, o.images)
    option_sets = {"speed94 (alternate flip, reflect padding)": Augment(flip_mode="alternate", pad_mode="reflect"),
                   "every option (RandAugment, erasing, mixup, cutmix)":
                       Augment(randaugment="rand-m9-n2", random_erasing=0.25, mixup=0.8, cutmix=1.0)}
    # the last: the builder thread started at the boundary instead of after the epoch's first batch
    strategies = ("per epoch", "every epoch up front", "next epoch ahead", "ahead, started at the boundary")

    def run(augment: Augment, strategy: str) -> tuple[float, list[float]]:
        # untimed: the loader (the split padded once, its epoch-0 plan); timed: the plans the strategy builds
        # before the first step, make_plan's calls as the loader makes them
        loader = build_loader("torch", images, labels, o.batch_size, train=True, seed=0, augment=augment)
        start_ahead = loader._plan_ahead
        if strategy != "next epoch ahead":
            loader._plan_ahead = lambda: None  # the strategy measured: the loader without it
        t0 = time.perf_counter()
        built = {e: make_plan(o.images, o.batch_size, 0, 1, seed=0, epoch=e, train=True, drop_last=True,
                              augment=augment) for e in range(o.epochs if strategy == "every epoch up front" else 1)}
        setup, waits = time.perf_counter() - t0, []
        if strategy == "every epoch up front":
            loader._build_plan = built.__getitem__
        for epoch in range(o.epochs):
            t0 = time.perf_counter()
            loader.set_epoch(epoch)
            loader.device_plan(loader.plan())
            if strategy == "ahead, started at the boundary":
                start_ahead()
            if epoch:
                waits.append(time.perf_counter() - t0)
            for _ in zip(range(o.batches), loader):
                pass
        return setup, waits

    for name, augment in option_sets.items():
        size = plan_bytes(make_plan(o.images, o.batch_size, 0, 1, seed=0, epoch=0, train=True, drop_last=True,
                                    augment=augment))
        print(f"### {name}: one plan of {o.images:,} images is {size / 1e6:.2f} MB\n")
        results = {s: ([], []) for s in strategies}
        for r in range(o.rounds + 1):  # round 0: warm-up, not recorded
            for s in strategies[r % len(strategies):] + strategies[:r % len(strategies)]:
                setup, waits = run(augment, s)
                if r:
                    results[s][0].append(setup)
                    results[s][1].extend(waits)
        print("| strategy | wait at each boundary, ms | plans built before the first step, ms |\n|---|---:|---:|")
        for s, (setup, waits) in results.items():
            print(f"| {s} | {ms(waits)} | {ms(setup)} |")
        print()
        if dali_available():
            loader = build_loader("dali", images, labels, o.batch_size // 2, train=True, seed=0, rank=0, world=2,
                                  augment=augment)
            times = []
            for epoch in range(o.epochs + 1):
                loader.set_epoch(epoch)
                plan = loader.plan()
                t0 = time.perf_counter()
                loader._epoch_arrays(plan)
                if epoch:  # epoch 0: warm-up
                    times.append(time.perf_counter() - t0)
            print(f"DALI, rank 0 of 2 (its partners too): a plan -> its host arrays, ms: {ms(times)}\n")


def cache(o: CostOptions) -> None:
    """What a repeat's `build_data` does with the data (load_dataset of CIFAR-10's binary files with
    verify=official, the training loader with padding 4 at batch 512, the test loader), with the cache
    emptied first (before) and as the next repeat finds it (now); the files in the OS page cache in both."""
    from harness.data.cifar import _files, load_dataset

    def repeat(empty: bool) -> float:
        if empty:
            CACHE.clear()
        t0 = time.perf_counter()
        ds = load_dataset("cifar10", o.root, "bin", "official")
        build_loader("torch", ds.train.images, ds.train.labels, 512, train=True, augment=Augment())
        build_loader("torch", ds.test.images, ds.test.labels, 2000, train=False)
        return time.perf_counter() - t0

    times = {True: [], False: []}
    for r in range(o.rounds + 1):  # round 0: warm-up
        for empty in ((True, False) if r % 2 else (False, True)):
            t = repeat(empty)
            if r:
                times[empty].append(t)
    saved = [b - a for b, a in zip(times[True], times[False])]
    print("| | per repeat, ms |\n|---|---:|")
    print(f"| before (read, parse, pad) | {ms(times[True])} |\n| now (cached) | {ms(times[False])} |\n"
          f"| saved per repeat | {ms(saved)} |\n")
    files = _files(Path(o.root), "cifar10", "bin")
    hashing = []
    for _ in range(o.rounds):
        t0 = time.perf_counter()
        h = hashlib.blake2b(digest_size=16)  # cache.py's content hash of a racy entry
        for f in files:
            h.update(f.read_bytes())
        hashing.append(time.perf_counter() - t0)
    print(f"hashing the {sum(f.stat().st_size for f in files) / 1e6:.0f} MB of files, ms: {ms(hashing)}")


def options(o: CostOptions) -> None:
    """One batch rendered and delivered (normalised float32, channels_last) by the torch backend, per data
    option added to crop + flip, over the first images of CIFAR-10's training set."""
    from harness.data.cifar import load_dataset

    ds = load_dataset("cifar10", o.root, "bin", "official")
    n = o.option_batch * o.option_batches * 4
    variants = {"crop + flip (the default)": {}, "+ cutout 8": dict(cutout=8),
                "+ randaugment rand-m9-n2": dict(randaugment="rand-m9-n2"),
                "+ random_erasing 0.25": dict(random_erasing=0.25), "+ mixup 0.8": dict(mixup=0.8),
                "+ cutmix 1.0": dict(cutmix=1.0),
                "all four (RandAugment, erasing, mixup, cutmix)":
                    dict(randaugment="rand-m9-n2", random_erasing=0.25, mixup=0.8, cutmix=1.0)}
    loaders = {name: build_loader("torch", ds.train.images[:n], ds.train.labels[:n], o.option_batch, train=True,
                                  augment=Augment(**kw)).endless() for name, kw in variants.items()}
    for it in loaders.values():  # warm-up: 3 batches each
        for _ in range(3):
            next(it)
    means = {name: [] for name in variants}
    names = list(variants)
    for r in range(o.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(o.option_batches):
                next(loaders[name])
            means[name].append((time.perf_counter() - t0) / o.option_batches)
    print(f"| options (each added to crop + flip) | ms per batch of {o.option_batch} (round means) |\n|---|---:|")
    for name, values in means.items():
        print(f"| {name} | {ms(values)} |")


def drop_path(o: CostOptions) -> None:
    """convnext's training step (forward, backward, SGD; channels_last, fp32, eager) without and with
    model.drop_path=0.1, alternating; and the stochastic depth op alone at the block outputs it acts on."""
    from torchvision.ops import StochasticDepth

    from harness.models import create_model

    x = torch.randn(o.drop_batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (o.drop_batch,))
    models = {rate: create_model("convnext", drop_path=rate).train().to(memory_format=torch.channels_last)
              for rate in (0.0, 0.1)}
    optims = {rate: torch.optim.SGD(m.parameters(), lr=0.01) for rate, m in models.items()}

    def step(rate: float) -> float:
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(models[rate](x), y)
        loss.backward()
        optims[rate].step()
        optims[rate].zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    times = {0.0: [], 0.1: []}
    for r in range(o.rounds + 1):  # round 0: warm-up
        for rate in ((0.0, 0.1) if r % 2 else (0.1, 0.0)):
            t = step(rate)
            if r:
                times[rate].append(t)
    ratio = [b / a for a, b in zip(times[0.0], times[0.1])]
    print(f"convnext, batch {o.drop_batch}, ms per step: without {ms(times[0.0])}, with model.drop_path=0.1 "
          f"{ms(times[0.1])}; per-round ratio {format_median(summarize(ratio), '.2f')}")
    # the op alone at the model's block outputs (shapes from one forward), forward and backward
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, out: shapes.append(out.shape))
             for m in models[0.1].modules() if isinstance(m, StochasticDepth)]
    models[0.1](x)
    for h in hooks:
        h.remove()
    outs = [torch.randn(s, requires_grad=True) for s in shapes]
    op = StochasticDepth(0.1, "row").train()
    alone = {True: [], False: []}
    for r in range(o.rounds * 3 + 1):
        for with_op in ((True, False) if r % 2 else (False, True)):
            t0 = time.perf_counter()
            sum((op(t) if with_op else t).sum() for t in outs).backward()
            if r:
                alone[with_op].append(time.perf_counter() - t0)
    extra = [a - b for a, b in zip(alone[True], alone[False])]
    print(f"the op alone at its {len(shapes)} block outputs (forward + backward, against the same sums without "
          f"it), ms per step: {ms(extra)}")


def main(argv: list[str] | None = None) -> int:
    o = parse_args(CostOptions, argv, prog="tools/data_costs.py", positional="what")
    jobs = {"plans": plans, "cache": cache, "options": options, "drop_path": drop_path}
    if o.what not in jobs:
        raise UserError(f"what={o.what!r}: measure one of {', '.join(jobs)}, e.g. tools/data_costs.py plans")
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    header(o)
    jobs[o.what](o)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
