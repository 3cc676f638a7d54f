"""The loaders (harness/data/: interface, torch_loader, dali, synthetic, loaders) on the CPU (the data
bench: tests/test_bench.py).

Every behavioural test runs for both real-data backends, torch and DALI (DALI on the CPU here, through
the same external_source interface the GPU path feeds; skipped where it is not installed); the two must
give the same batches for the same (seed, epoch, global position), whatever the number of processes.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from harness.data import loaders
from harness.data.cifar import random_split
from harness.data.interface import eval_indices, global_order, pad_images
from harness.data.loaders import CIFAR_MEAN, CIFAR_STD, Augment, EpochPlan, build_loader, make_plan, resolve_backend
from harness.data.torch_loader import TorchLoader
from harness.errors import UserError

BACKENDS = ["torch", "dali"]
# Every option that draws per image (issue 22's regularisation), for the world-size and resume tests: the
# plain crop/flip/cutout case and this one.
ALL_OPTIONS = dict(randaugment="rand-m9-n2", random_erasing=0.5, mixup=0.8, cutmix=1.0)
# On a GPU machine every loader test runs on the GPU (DALI's GPU operators, the device-resident torch
# backend); here, on the CPU.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _needs(backend: str) -> None:
    if backend == "dali":
        pytest.importorskip("nvidia.dali")


def make(backend: str, images, labels, batch_size: int, **kw):
    _needs(backend)
    kw.setdefault("train", True)
    kw.setdefault("device", DEVICE)
    return build_loader(backend, images, labels, batch_size, **kw)


@pytest.fixture(scope="module")
def data():
    s = random_split(200, seed=1)
    return s.images, s.labels


def coded_images(n: int) -> np.ndarray:
    """Pixel (r, c) of image i holds (r + 1, c + 1, i): a crop's offset and flip can be read back (0 is
    the zero padding, which no image pixel has in channels 0 and 1)."""
    x = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    x[..., 0] = np.arange(1, 33)[None, :, None]
    x[..., 1] = np.arange(1, 33)[None, None, :]
    x[..., 2] = (np.arange(n) % 256)[:, None, None]
    return x


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """Undo the normalisation: NCHW float batch -> NHWC uint8 (exact for these integer inputs)."""
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1) * 255
    return (x.float().cpu() * std + mean).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


# -- the plan ---------------------------------------------------------------------------------------


def test_plan_parameters_are_uniform():
    # 40,000 draws at a fixed seed: deterministic, and the bounds are far out in the tails of the
    # chi-square distribution (p < 1e-6 for a fair generator), so they are not flaky on a new seed either.
    plan = make_plan(40000, 100, 0, 1, seed=123, epoch=0, train=True, drop_last=True, augment=Augment(padding=4))
    for offsets in (plan.dy, plan.dx):
        counts = np.bincount(offsets.numpy(), minlength=9)
        assert len(counts) == 9 and counts.min() > 0  # every offset 0..8, nothing outside
        assert chi_square(counts) < 45.0  # 8 degrees of freedom: p = 1e-6 at 45.5
    flips = int(plan.flip.sum())
    assert abs(flips - 20000) < 5 * 100  # binomial sd = sqrt(40000 / 4) = 100
    for centre in (plan.cy, plan.cx):
        counts = np.bincount(centre.numpy(), minlength=32)
        assert len(counts) == 32 and chi_square(counts) < 85.0  # 31 dof: p = 1e-6 at 84
    # offsets and flips are independent of each other: the 9 x 9 x 2 joint table is uniform too
    joint = np.bincount((plan.dy * 18 + plan.dx * 2 + plan.flip.long()).numpy(), minlength=162)
    assert chi_square(joint) < 260.0  # 161 dof: p = 1e-6 at 257


def test_reshuffle_changes_with_epoch_and_is_reproducible():
    kw = dict(seed=7, train=True, drop_last=True, augment=Augment())
    e0, e0_again, e1 = (make_plan(500, 50, 0, 1, epoch=e, **kw) for e in (0, 0, 1))
    assert torch.equal(e0.indices, e0_again.indices) and torch.equal(e0.dy, e0_again.dy)
    assert not torch.equal(e0.indices, e1.indices)
    assert not torch.equal(e0.dx, e1.dx)
    other_seed = make_plan(500, 50, 0, 1, epoch=0, **{**kw, "seed": 8})
    assert not torch.equal(e0.indices, other_seed.indices)


@pytest.mark.parametrize("drop_last", [True, False])
def test_global_order_policy(drop_last):
    n, G = 103, 24
    order = global_order(n, G, seed=0, epoch=3, drop_last=drop_last)
    assert len(order) % G == 0
    if drop_last:  # whole global batches of distinct samples; fewer than G dropped
        assert len(set(order.tolist())) == len(order) and n - len(order) < G
    else:  # the last global batch is filled by wrapping: every sample seen, fewer than G twice
        assert set(order.tolist()) == set(range(n)) and len(order) - n < G
        assert torch.equal(order[n:], order[: len(order) - n])


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_evaluation_shards_cover_every_sample_once(world):
    shards = [eval_indices(103, 8, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and all(len(s) % 8 == 0 for s in shards)
    real = torch.cat(shards)
    assert sorted(real[real >= 0].tolist()) == list(range(103))


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_plan_is_world_size_invariant(world, drop_last):
    # rank r's part of global batch k is positions [k*G + r*B, k*G + (r+1)*B) of the 1-process plan, and
    # so are its mixing partners' parameters
    n, B = 200, 12
    kw = dict(seed=9, epoch=2, train=True, drop_last=drop_last, augment=Augment(cutout=6, **ALL_OPTIONS))
    whole = make_plan(n, B * world, 0, 1, **kw)
    parts = [make_plan(n, B, r, world, **kw) for r in range(world)]

    def joined(field, plans):  # the ranks' rows of each global batch, side by side: (positions, ...)
        t = torch.stack([getattr(p, field).view(-1, B, *getattr(p, field).shape[1:]) for p in plans], 1)
        return t.reshape(-1, *t.shape[3:])

    for field in ("indices", "dy", "dx", "flip", "cy", "cx", "ops", "negate", "erase", "lam", "cut", "box"):
        assert torch.equal(joined(field, parts), getattr(whole, field)), field
    for field in ("indices", "ops", "erase"):
        assert torch.equal(joined(field, [p.partner for p in parts]), getattr(whole.partner, field)), field
    # the partner of global position i is position G - 1 - i of its global batch
    G = B * world
    assert torch.equal(whole.partner.indices.view(-1, G), whole.indices.view(-1, G).flip(1))


@pytest.mark.parametrize("options", [{}, ALL_OPTIONS], ids=["crop", "all"])
def test_plans_built_ahead_equal_plans_built_per_epoch(options, data, monkeypatch):
    # a training loader builds epoch e+1's plan on a background thread during epoch e: every epoch's plan
    # is built once, epochs 1.. off the loader's thread, and equals make_plan's for that epoch
    from harness.data import interface

    built = []  # (epoch, thread) of every make_plan call

    def counting(*a, **kw):
        built.append((kw["epoch"], threading.current_thread() is threading.main_thread()))
        return make_plan(*a, **kw)

    monkeypatch.setattr(interface, "make_plan", counting)
    augment = Augment(cutout=6, **options)
    loader = make("torch", *data, 20, seed=6, drop_last=False, augment=augment)
    for epoch in range(4):
        loader.set_epoch(epoch)
        assert sum(1 for _ in loader) == 10
        got = loader.plan()
        want = make_plan(200, 20, 0, 1, seed=6, epoch=epoch, train=True, drop_last=False, augment=augment)
        for plan, ref in ((got, want), (got.partner, want.partner)):
            if ref is None:
                assert plan is None
                continue
            for field in EpochPlan.RENDER + ("lam", "cut", "box"):
                a, b = getattr(plan, field, None), getattr(ref, field, None)
                assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), (epoch, field)
            if DEVICE.type == "cuda":  # page-locked: the copy to the device is asynchronous
                assert plan.indices.is_pinned()
    loader.set_epoch(4)  # built during epoch 3
    loader.plan()
    assert sorted(built) == [(0, True)] + [(e, False) for e in range(1, 5)]
    # evaluation: one plan, built once, in the loader's thread
    built.clear()
    ev = make("torch", *data, 16, train=False)
    for epoch in range(3):
        ev.set_epoch(epoch)
        assert sum(1 for _ in ev) == 13
    assert built == [(0, True)]
    assert torch.equal(ev.plan().indices, eval_indices(200, 16, 0, 1))


def test_no_plan_is_built_past_the_last_epoch(data, monkeypatch):
    # a loader that knows the run's epochs builds none ahead after the last, and its builder thread is a
    # daemon (a process that ends does not wait for a plan); without `epochs` it plans on, as endless does
    from harness.data import interface

    built = []  # (epoch, the loader's thread, a daemon thread)

    def counting(*a, **kw):
        t = threading.current_thread()
        built.append((kw["epoch"], t is threading.main_thread(), t.daemon))
        return make_plan(*a, **kw)

    monkeypatch.setattr(interface, "make_plan", counting)
    for epochs, last in ((3, 2), (None, 3)):
        built.clear()
        loader = make("torch", *data, 20, seed=6, augment=Augment(**ALL_OPTIONS), epochs=epochs)
        for epoch in range(3):
            loader.set_epoch(epoch)
            assert sum(1 for _ in loader) == 10
        for t in threading.enumerate():  # a plan still being built
            if t.name.startswith("harness-plan-epoch-"):
                t.join()
        assert sorted(built) == [(0, True, False)] + [(e, False, True) for e in range(1, last + 1)], epochs


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_set_epoch_during_a_pass_changes_nothing_of_it(backend, world, data):
    # a pass renders the plan it started with: images and their mixing (weights, boxes, partners) from one
    # epoch even when set_epoch moves on in the middle (rank 0 of 2 renders its partners; 1 process does not)
    kw = dict(seed=4, rank=0, world=world, augment=Augment(cutout=6, **ALL_OPTIONS))
    reference = []
    for epoch in (0, 1):
        fresh = make(backend, *data, 40 // world, **kw)
        fresh.set_epoch(epoch)
        reference.append(list(fresh))
    loader = make(backend, *data, 40 // world, **kw)
    it = iter(loader)
    passes = [[next(it)]]
    loader.set_epoch(1)
    passes[0] += list(it)
    passes.append(list(loader))  # the next pass is epoch 1's
    for got, want in zip(passes, reference, strict=True):
        assert len(got) == len(want) == 5
        for (x, y), (u, v) in zip(got, want):
            assert torch.equal(x, u) and torch.equal(y, v)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_plan_reaches_the_device_once_with_only_what_the_backend_reads_there(backend, data):
    # torch renders from every field but the RandAugment rows (grouped on the host); DALI takes its rendering
    # parameters from the host and needs only the indices and the mixing on the device; the partners' fields
    # only where the rank renders them (not on 1 process). One copy per plan: a pass reuses it, and DALI's
    # sources gather with the same indices tensor.
    mixing = ("lam", "cut", "box")
    want = ({"indices", "dy", "dx", "flip", "cy", "cx", "erase", *mixing} if backend == "torch"
            else {"indices", *mixing})
    for world in (1, 2):
        loader = make(backend, *data, 40 // world, seed=2, rank=0, world=world,
                      augment=Augment(cutout=6, **ALL_OPTIONS))
        assert len(list(loader)) == 5
        plan = loader.plan()
        rows = loader.device_plan(plan)
        assert set(rows) - {"partner"} == want
        assert ("partner" in rows) == (world == 2)
        if world == 2:
            assert set(rows["partner"]) == want - set(mixing)
        assert loader.device_plan(plan) is rows  # not copied again
        if backend == "dali":
            assert loader._arrays[1] is rows["indices"]  # the gather's indices: the same copy


@pytest.mark.parametrize("options", [{}, ALL_OPTIONS], ids=["crop", "all"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_batches_from_plans_built_ahead_equal_a_fresh_loaders(backend, options, data):
    # one loader through 3 epochs (plans 1 and 2 built ahead, on a thread) renders the same batches as a
    # fresh loader started at each epoch (its plan built on the spot), for both backends
    kw = dict(seed=12, augment=Augment(cutout=6, **options))
    running = make(backend, *data, 40, **kw)
    for epoch in range(3):
        running.set_epoch(epoch)
        fresh = make(backend, *data, 40, **kw)
        fresh.load_state_dict({"epoch": epoch, "batch": 0})
        pairs = list(zip(running, fresh, strict=True))
        assert len(pairs) == 5
        for (x, y), (u, v) in pairs:
            assert torch.equal(x, u) and torch.equal(y, v), epoch


# -- the backends -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_format(backend, channels_last, dtype, data):
    loader = make(backend, *data, 32, channels_last=channels_last, dtype=dtype, augment=Augment(cutout=8))
    batches = list(loader)
    assert len(batches) == len(loader) == 200 // 32
    for x, y in batches:
        assert x.shape == (32, 3, 32, 32) and x.dtype == dtype and x.device.type == DEVICE.type
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert x.is_contiguous(memory_format=fmt)
        assert y.dtype == torch.int64 and y.shape == (32,) and y.device.type == DEVICE.type
        assert 0 <= int(y.min()) and int(y.max()) < 10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
def test_rendered_batches_are_the_planned_crops(backend, pad_mode):
    n, p = 96, 4
    images = coded_images(n)
    loader = make(backend, images, np.zeros(n, dtype=np.int64), 32, seed=5,
                  augment=Augment(padding=p, pad_mode=pad_mode))
    plan = loader.plan()
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), mode="constant" if pad_mode == "zeros" else "reflect")
    for k, (x, _) in enumerate(loader):
        got = to_pixels(x)
        for j in range(32):
            i = 32 * k + j
            s, dy, dx, flip = int(plan.indices[i]), int(plan.dy[i]), int(plan.dx[i]), bool(plan.flip[i])
            expected = padded[s, dy:dy + 32, dx:dx + 32]
            if flip:
                expected = expected[:, ::-1]
            assert np.array_equal(got[j], expected), (k, j)
            if pad_mode == "reflect":
                continue  # the centre-pixel read-back below is for zero padding only
            # and read the offset and flip back from the centre pixels alone
            row, col, col_right = int(got[j, 16, 16, 0]) - 1, int(got[j, 16, 16, 1]) - 1, int(got[j, 16, 17, 1]) - 1
            assert got[j, 16, 16, 2] == s % 256  # the right image
            assert (col_right < col) == flip
            assert row - 16 + p == dy
            assert (col - 15 + p if flip else col - 16 + p) == dx


@pytest.mark.parametrize("backend", BACKENDS)
def test_cutout_zeroes_one_clipped_square(backend):
    n, c = 256, 10
    images = np.full((n, 32, 32, 3), 200, dtype=np.uint8)  # normalises to nonzero in every channel
    loader = make(backend, images, np.zeros(n, dtype=np.int64), 64, seed=2, augment=Augment(padding=0, cutout=c))
    plan = loader.plan()
    clipped = 0
    for k, (x, _) in enumerate(loader):
        zero = (x == 0).cpu().numpy()
        assert (zero == zero[:, :1]).all()  # all channels alike
        for j in range(len(x)):
            i = 64 * k + j
            top, left = int(plan.cy[i]) - c // 2, int(plan.cx[i]) - c // 2
            expected = np.zeros((32, 32), dtype=bool)
            expected[max(top, 0):max(top + c, 0), max(left, 0):max(left + c, 0)] = True
            assert np.array_equal(zero[j, 0], expected), (k, j)
            clipped += int(expected.sum() < c * c)
    assert clipped > 0  # the edge case was exercised


def test_backends_give_identical_batches(data):
    pytest.importorskip("nvidia.dali")
    cases = [
        dict(train=True, augment=Augment(cutout=8), drop_last=False),  # a wrapped last batch too
        dict(train=True, augment=Augment(cutout=8, flip_mode="alternate", pad_mode="reflect")),
        dict(train=True, augment=Augment(enabled=False)),
        dict(train=False),  # evaluation: padded last batch
    ]
    for kw in cases:
        for channels_last in (True, False):
            a = make("torch", *data, 48, seed=11, channels_last=channels_last, **kw)
            b = make("dali", *data, 48, seed=11, channels_last=channels_last, **kw)
            for epoch in (0, 1):
                a.set_epoch(epoch)
                b.set_epoch(epoch)
                pairs = list(zip(a, b, strict=True))
                assert len(pairs) == len(a)
                for (x, y), (u, v) in pairs:
                    assert torch.equal(y, v)
                    assert x.shape == u.shape and x.stride() == u.stride()
                    # same float32 mean/std; DALI's (x - mean) / std rounds within a unit in the last place
                    torch.testing.assert_close(x, u, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_evaluation_padding_and_counts(backend, world, data):
    n = 103
    images, labels = data[0][:n], data[1][:n]
    seen = []
    for rank in range(world):
        loader = make(backend, images, labels, 16, train=False, rank=rank, world=world)
        lengths = set()
        for _, y in loader:
            lengths.add(len(y))
            seen += y[y >= 0].tolist()
            assert ((y == -1) | (y >= 0)).all()
        assert lengths == {16}
    assert len(seen) == n
    assert sorted(seen) == sorted(labels.tolist())


@pytest.mark.parametrize("options", [{}, ALL_OPTIONS], ids=["crop", "all"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_mid_epoch(backend, options, data):
    kw = dict(seed=4, augment=Augment(cutout=6, **options))
    fresh = make(backend, *data, 20, **kw)
    fresh.set_epoch(2)
    full = list(fresh)
    assert len(full) == 10
    # state_dict during a pass counts the batches handed out
    resumed = make(backend, *data, 20, **kw)
    resumed.set_epoch(2)
    it = iter(resumed)
    for _ in range(4):
        next(it)
    state = resumed.state_dict()
    assert state == {"epoch": 2, "batch": 4}
    del it  # an abandoned pass (DALI has batches queued ahead): the next pass must not see them
    for k in (4, 0, 9, 10):
        again = make(backend, *data, 20, **kw)
        again.load_state_dict({"epoch": 2, "batch": k})
        rest = list(again)
        assert len(rest) == 10 - k
        for (x, y), (u, v) in zip(rest, full[k:]):
            assert torch.equal(x, u) and torch.equal(y, v)
        assert again.state_dict() == {"epoch": 2, "batch": 0}
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert all(torch.equal(x, u) for (x, _), (u, _) in zip(rest, full[4:])) and len(rest) == 6
    # and a whole pass afterwards is the whole epoch again, even while an abandoned pass is still alive
    stale = iter(resumed)
    next(stale)
    again = list(resumed)
    del stale  # finalising the stale pass late must not disturb the next one
    assert len(again) == 10 and all(torch.equal(x, u) for (x, _), (u, _) in zip(again, full))
    assert all(torch.equal(x, u) for (x, _), (u, _) in zip(resumed, full))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("drop_last", [True, False])
def test_global_batch_larger_than_the_data_is_an_error(backend, drop_last, data):
    message = r"global batch \(128 per process x 2 processes = 256 images\) is larger than the training data \(200"
    with pytest.raises(UserError, match=message) as e:
        make(backend, *data, 128, world=2, drop_last=drop_last)
    assert "train.batch_size" in str(e.value)


def test_missing_dali_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(loaders, "dali_available", lambda: False)
    with pytest.raises(UserError) as e:
        resolve_backend("dali", torch.device("cuda"))
    assert "pip install" in str(e.value) and "data.backend=torch" in str(e.value)
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    with pytest.raises(UserError, match="use torch, dali or synthetic"):
        build_loader("auto", None, None, 8, train=True)


def test_auto_follows_the_measured_winner(monkeypatch):
    # no GPU measurement yet: torch on CUDA even where DALI is installed
    monkeypatch.setattr(loaders, "dali_available", lambda: True)
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    # a measurement that DALI wins on GPUs flips the table entry, and auto with it
    monkeypatch.setitem(loaders.AUTO_BACKEND, "cuda", "dali")
    assert resolve_backend("auto", torch.device("cuda")) == "dali"
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    monkeypatch.setattr(loaders, "dali_available", lambda: False)
    assert resolve_backend("auto", torch.device("cuda")) == "torch"  # the winner is not installed


def test_torch_loader_is_the_default_real_backend(data):
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert isinstance(build_loader("torch", *data, 10, train=True), TorchLoader)


# -- world-size invariance ----------------------------------------------------------------------------


def render_ranks(backend, images, labels, B, world, *, epoch, state=None, **kw):
    """Per global batch, the concatenation over ranks of each rank's batch (images, labels)."""
    per_rank = []
    for rank in range(world):
        loader = make(backend, images, labels, B, rank=rank, world=world, **kw)
        loader.set_epoch(epoch)
        if state is not None:
            loader.load_state_dict(state)
        per_rank.append(list(loader))
    return [(torch.cat([b[k][0] for b in per_rank]), torch.cat([b[k][1] for b in per_rank]))
            for k in range(len(per_rank[0]))]


@pytest.mark.parametrize("options", [{}, ALL_OPTIONS], ids=["crop", "all"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_global_batches_do_not_depend_on_the_world_size(backend, options):
    # coded images: equal pixels mean the same image with the same crop, flip and cutout (and RandAugment
    # ops, erased rectangle, mixing partner, weight and box: the targets are soft then)
    n, G = 200, 48
    images, labels = coded_images(n), np.arange(n) % 10
    kw = dict(seed=3, augment=Augment(cutout=8, **options), drop_last=False)
    one = render_ranks(backend, images, labels, G, 1, epoch=1, **kw)
    assert len(one) == 5  # ceil(200 / 48), the last global batch wrapped to full size
    for world in (2, 3, 4):  # 3: the middle rank mixes with its own images, the others render partners
        many = render_ranks(backend, images, labels, G // world, world, epoch=1, **kw)
        assert len(many) == len(one)
        for (x, y), (u, v) in zip(one, many):
            assert torch.equal(y, v) and torch.equal(x, u)


@pytest.mark.parametrize("options", [{}, ALL_OPTIONS], ids=["crop", "all"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_with_another_world_size_continues_the_sequence(backend, options):
    n, G = 200, 24
    images, labels = coded_images(n), np.arange(n) % 10
    kw = dict(seed=8, augment=Augment(cutout=4, **options))
    reference = render_ranks(backend, images, labels, G, 1, epoch=2, **kw)
    # two processes hand out 3 global batches and checkpoint; the run resumes on 4 processes, then 1
    two = [make(backend, images, labels, G // 2, rank=r, world=2, **kw) for r in range(2)]
    for loader in two:
        loader.set_epoch(2)
        it = iter(loader)
        for _ in range(3):
            next(it)
    state = two[0].state_dict()
    assert state == two[1].state_dict() == {"epoch": 2, "batch": 3}
    for world in (4, 1):
        rest = render_ranks(backend, images, labels, G // world, world, epoch=2, state=state, **kw)
        assert len(rest) == len(reference) - 3
        for (x, y), (u, v) in zip(rest, reference[3:]):
            assert torch.equal(x, u) and torch.equal(y, v)


# -- the speed recipe's options -----------------------------------------------------------------------


def test_alternate_flip_differs_in_consecutive_epochs():
    n = 500
    kw = dict(seed=4, train=True, drop_last=False, augment=Augment(flip_mode="alternate"))

    def flips(epoch):  # sample -> flip (drop_last=False: every sample is in every epoch)
        plan = make_plan(n, 50, 0, 1, epoch=epoch, **kw)
        return dict(zip(plan.indices.tolist(), plan.flip.tolist()))

    epochs = [flips(e) for e in range(4)]
    for e in range(3):
        assert all(epochs[e][s] != epochs[e + 1][s] for s in range(n)), e
    assert 200 < sum(epochs[0].values()) < 300  # epoch 0 is a fair coin per sample (binomial sd 11)
    # random flips, by contrast, agree between consecutive epochs for about half of the samples
    kw["augment"] = Augment(flip_mode="random")
    random = [flips(e) for e in range(2)]
    assert 200 < sum(random[0][s] == random[1][s] for s in range(n)) < 300
    # alternate flips do not depend on the world size either (a coin per sample, not per position)
    kw["augment"] = Augment(flip_mode="alternate")
    two = [make_plan(n, 25, r, 2, epoch=3, **kw) for r in range(2)]
    assert all(epochs[3][s] == f for p in two for s, f in zip(p.indices.tolist(), p.flip.tolist()))


def test_reflect_padding_mirrors_the_border():
    p = 4
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    padded = pad_images(images, p, "reflect").numpy()
    assert padded.shape == (3, 40, 40, 3)
    assert np.array_equal(padded[:, p:-p, p:-p], images)
    for j in range(1, p + 1):  # the j-th pixel outside the border is the j-th inside it, edge not repeated
        assert np.array_equal(padded[:, p - j, p:-p], images[:, j])
        assert np.array_equal(padded[:, p + 31 + j, p:-p], images[:, 31 - j])
        assert np.array_equal(padded[:, p:-p, p - j], images[:, :, j])
        assert np.array_equal(padded[:, p:-p, p + 31 + j], images[:, :, 31 - j])
    assert (pad_images(images, p, "zeros").numpy()[:, :p] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_reflect_padding_leaves_no_zero_border(backend):
    # images of only nonzero pixels: zero padding shows up as zero pixels in some crops, reflection never
    n = 128
    images = np.full((n, 32, 32, 3), 77, dtype=np.uint8)
    counts = {}
    for mode in ("zeros", "reflect"):
        loader = make(backend, images, np.zeros(n, dtype=np.int64), 64, seed=1,
                      augment=Augment(padding=4, pad_mode=mode))
        counts[mode] = sum(int((to_pixels(x) == 0).sum()) for x, _ in loader)
    assert counts["zeros"] > 0 and counts["reflect"] == 0


def test_unknown_flip_or_pad_mode_is_a_clear_error():
    with pytest.raises(UserError, match="flip_mode is one of"):
        Augment(flip_mode="sometimes")
    with pytest.raises(UserError, match="pad_mode one of"):
        Augment(pad_mode="edge")

