"""The loaders (harness/data/loaders.py, harness/data/dali.py) and the data bench, on the CPU.

Every behavioural test runs for both real-data backends, torch and DALI (DALI on the CPU here, skipped
where it is not installed); the two must give the same batches for the same (seed, epoch, rank).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.data import loaders
from harness.data.cifar import random_split
from harness.data.loaders import (CIFAR_MEAN, CIFAR_STD, Augment, TorchLoader, build_loader, make_plan,
                                  resolve_backend, shard_indices)
from harness.errors import UserError

BACKENDS = ["torch", "dali"]
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


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_training_shards(world):
    n, bs = 103, 8
    kw = dict(shuffle=True, seed=0, epoch=3)
    # drop_last=False: equal shards that together hold every sample; only the wrap-around repeats some
    shards = [shard_indices(n, bs, r, world, drop_last=False, **kw) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    everything = torch.cat(shards)
    assert set(everything.tolist()) == set(range(n))
    assert len(everything) - n < world
    # drop_last=True: disjoint whole batches; what is dropped is less than one batch per rank
    shards = [shard_indices(n, bs, r, world, drop_last=True, **kw) for r in range(world)]
    assert all(len(s) % bs == 0 and len(s) > 0 for s in shards)
    seen = torch.cat(shards).tolist()
    assert len(seen) == len(set(seen)) and n - len(seen) < world * bs


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
def test_rendered_batches_are_the_planned_crops(backend):
    n, p = 96, 4
    images = coded_images(n)
    loader = make(backend, images, np.zeros(n, dtype=np.int64), 32, seed=5, augment=Augment(padding=p))
    plan = loader.plan()
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    for k, (x, _) in enumerate(loader):
        got = to_pixels(x)
        for j in range(32):
            i = 32 * k + j
            s, dy, dx, flip = int(plan.indices[i]), int(plan.dy[i]), int(plan.dx[i]), bool(plan.flip[i])
            expected = padded[s, dy:dy + 32, dx:dx + 32]
            if flip:
                expected = expected[:, ::-1]
            assert np.array_equal(got[j], expected), (k, j)
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
        dict(train=True, augment=Augment(cutout=8), drop_last=False),  # a smaller last batch too
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_mid_epoch(backend, data):
    kw = dict(seed=4, augment=Augment(cutout=6))
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
def test_batch_larger_than_shard_is_an_error(backend, data):
    with pytest.raises(UserError, match="larger than a process's share"):
        make(backend, *data, 128, world=2)


def test_missing_dali_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(loaders, "dali_available", lambda: False)
    with pytest.raises(UserError) as e:
        resolve_backend("dali", torch.device("cuda"))
    assert "pip install" in str(e.value) and "data.backend=torch" in str(e.value)
    assert resolve_backend("auto", torch.device("cuda")) == "torch"


def test_torch_loader_is_the_default_real_backend(data):
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert isinstance(build_loader("torch", *data, 10, train=True), TorchLoader)


# -- the bench --------------------------------------------------------------------------------------


def test_bench_smoke(tmp_path):
    from harness.data import bench

    backends = "torch,dali,synthetic" if loaders.dali_available() else "torch,synthetic"
    bench.main([f"backends={backends}", "models=simple_cnn", "batch_size=8", "steps=2", "warmup=1",
                "repeats=1", f"data_root={tmp_path / 'no-data'}", "limit_train=64", f"out={tmp_path}"])
    result = json.loads((tmp_path / "bench.json").read_text())
    assert "RANDOM" in result["data"] and "not a GPU measurement" in result["device"]
    assert [r["backend"] for r in result["loaders"]] == backends.split(",")
    assert all(r["images_per_s"] > 0 for r in result["loaders"] + result["training"])
    assert (tmp_path / "bench.md").read_text().startswith("# Data-pipeline benchmark")
