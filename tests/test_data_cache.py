"""The process's data cache (harness/data/cache.py): the data set and its padded split are read and made
once per process while the files are unchanged, a changed file or another data set is read afresh, and
train.repeats' runs share one read and one padding. Work is counted with the cache's counters, never timed."""
from __future__ import annotations

import gc
import json
import os
import sys
import time
import weakref

import numpy as np
import pytest
import torch

from harness.data import cache as cache_module
from harness.data.cache import CACHE, DERIVED_MAX
from harness.data.cifar import BINARY, load_dataset, random_split
from harness.data.loaders import Augment, build_loader
from tests.conftest import FAST, make_cifar, run_harness
from tests.test_recompile import PROBE as RECOMPILE_PROBE

BIN = BINARY["cifar10"]


@pytest.fixture(autouse=True)
def empty_cache():
    CACHE.clear()
    yield
    CACHE.clear()


def load(root, fmt="bin"):
    return load_dataset("cifar10", root, fmt, verify="structure")


def age(root, seconds: float = 3600) -> None:
    """Date every file under root `seconds` back: files unpacked long before the run (not racy)."""
    t = time.time() - seconds
    for dirpath, _, names in os.walk(root):
        for n in names:
            os.utime(os.path.join(dirpath, n), (t, t))


def rewrite_record(path, record: int, value: int) -> None:
    """Overwrite the first image byte of `record` in a CIFAR-10 binary file: same size, new content."""
    raw = bytearray(path.read_bytes())
    raw[record * (1 + 3072) + 1] = value
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("fmt", ["bin", "py"])
def test_the_same_files_are_read_once(tmp_path, fmt):
    root = make_cifar(tmp_path, fmt)
    reads = CACHE.reads
    a, b = load(root, fmt), load(root, fmt)
    assert CACHE.reads == reads + 1
    assert a.train.images is b.train.images and a.test.labels is b.test.labels  # the same arrays
    assert a is not b and a.train is not b.train  # fresh wrappers: reassigning a field leaves the cache alone
    a.train = None
    assert load(root, fmt).train.images is b.train.images and CACHE.reads == reads + 1


def test_a_changed_file_is_read_again_even_within_the_timestamp_tick(tmp_path):
    # the files were just written: racy, so the entry is checked by content too. A same-size rewrite in
    # the same mtime tick leaves the stat as it was: made certain here by setting the old mtime back.
    root = make_cifar(tmp_path)
    first = load(root)
    old_pixel = int(first.train.images[0, 0, 0, 0])
    reads = CACHE.reads
    path = root / BIN["dir"] / BIN["train"][0]
    before = os.stat(path)
    rewrite_record(path, 0, (old_pixel + 1) % 256)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    again = load(root)
    assert CACHE.reads == reads + 1
    assert int(again.train.images[0, 0, 0, 0]) == (old_pixel + 1) % 256
    assert again.train.images is not first.train.images
    # a file that changes size (two records fewer) is read again too
    path = root / BIN["dir"] / BIN["train"][1]
    path.write_bytes(path.read_bytes()[: -2 * (1 + 3072)])
    assert len(load(root).train) == len(again.train) - 2 and CACHE.reads == reads + 2


def test_old_files_are_checked_by_stat_alone(tmp_path, monkeypatch):
    # files dated long before the read are not hashed on a lookup; a rewrite changes their mtime
    root = make_cifar(tmp_path)
    age(root)
    first = load(root)
    hashed = []
    monkeypatch.setattr(cache_module, "_digest", lambda paths: hashed.append(paths) or "x")
    assert load(root).train.images is first.train.images and hashed == []
    reads = CACHE.reads
    rewrite_record(root / BIN["dir"] / BIN["test"][0], 3, 7)  # same size, a new mtime (not racy: now vs an hour ago)
    monkeypatch.undo()
    assert int(load(root).test.images[3, 0, 0, 0]) == 7 and CACHE.reads == reads + 1


def test_another_data_set_frees_the_first(tmp_path):
    a_root, b_root = make_cifar(tmp_path / "a", seed=1), make_cifar(tmp_path / "b", seed=2)
    a = load(a_root)
    gone = weakref.ref(a.train.images)
    a_pixels = a.train.images.copy()
    del a
    b = load(b_root)
    assert not np.array_equal(b.train.images, a_pixels)
    gc.collect()
    assert gone() is None  # one data set at a time: the first one's arrays are freed
    reads = CACHE.reads
    assert np.array_equal(load(a_root).train.images, a_pixels) and CACHE.reads == reads + 1


def test_padded_split_is_made_once_per_view_and_key(tmp_path):
    ds = load(make_cifar(tmp_path, n_train=96))
    made = CACHE.derivations
    kw = dict(train=True, seed=0, device="cpu")
    first = build_loader("torch", ds.train.images[:64], ds.train.labels[:64], 16, augment=Augment(), **kw)
    # the next run's loader over a new view of the same rows (train.py slices per run): the same tensor
    again = load(tmp_path)
    second = build_loader("torch", again.train.images[:64], again.train.labels[:64], 16, augment=Augment(), **kw)
    assert second.images is first.images and CACHE.derivations == made + 1
    assert torch.equal(second.images[:, 4:-4, 4:-4], torch.from_numpy(ds.train.images[:64]))
    # another slice, another padding mode, or no padding (evaluation): each its own tensor, made once
    others = [build_loader("torch", ds.train.images[32:96], ds.train.labels[32:96], 16, augment=Augment(), **kw),
              build_loader("torch", ds.train.images[:64], ds.train.labels[:64], 16,
                           augment=Augment(pad_mode="reflect"), **kw),
              build_loader("torch", ds.test.images, ds.test.labels, 16, train=False, device="cpu")]
    assert len({id(o.images) for o in others} | {id(first.images)}) == 4
    assert CACHE.derivations == made + 4
    assert torch.equal(others[0].images[:, 4:-4, 4:-4], torch.from_numpy(ds.train.images[32:96]))
    assert others[2].images.shape == (128, 32, 32, 3)
    # bounded: DERIVED_MAX (3) tensors, the least recently used (the first view) evicted and made again
    assert DERIVED_MAX == 3
    third = build_loader("torch", ds.train.images[:64], ds.train.labels[:64], 16, augment=Augment(), **kw)
    assert third.images is not first.images and CACHE.derivations == made + 5
    assert torch.equal(third.images, first.images)
    # an array the cache does not own is padded every time
    own = random_split(64, seed=3)
    made = CACHE.derivations
    x, y = (build_loader("torch", own.images, own.labels, 16, augment=Augment(), **kw) for _ in range(2))
    assert x.images is not y.images and torch.equal(x.images, y.images) and CACHE.derivations == made


def test_changed_files_give_a_freshly_padded_split(tmp_path):
    root = make_cifar(tmp_path)
    kw = dict(train=True, seed=0, device="cpu", augment=Augment())
    ds = load(root)
    before = build_loader("torch", ds.train.images, ds.train.labels, 16, **kw).images
    rewrite_record(root / BIN["dir"] / BIN["train"][0], 0, (int(ds.train.images[0, 0, 0, 0]) + 1) % 256)
    ds2 = load(root)
    after = build_loader("torch", ds2.train.images, ds2.train.labels, 16, **kw).images
    assert after is not before
    assert int(after[0, 4, 4, 0]) == int(ds2.train.images[0, 0, 0, 0]) != int(before[0, 4, 4, 0])


# the harness's command line run in-process (tests/test_recompile.py's probe), then the cache's counters
PROBE = RECOMPILE_PROBE + """
from harness.data.cache import CACHE
print("CACHE " + json.dumps({"reads": CACHE.reads, "derivations": CACHE.derivations}))
"""


def test_repeats_read_and_pad_the_data_once(tmp_path):
    # train.repeats=2 in one process: one read of the files, one padded train split and one test split
    root = make_cifar(tmp_path / "data")
    out = tmp_path / "run"
    proc = run_harness([*FAST, f"data.root={root}", "train.repeats=2", f"run.dir={out}"],
                       launcher=[sys.executable, "-c", PROBE])
    assert json.loads((out / "repeats.json").read_text())["n"] == 2
    counts = json.loads(proc.stdout.split("CACHE ", 1)[1])
    assert counts == {"reads": 1, "derivations": 2}, counts
