"""The process's data cache: the data set read from disk, and what the loaders derive from it (the
padded split on the training device), kept for the next run in the same process.

`train.repeats=N` calls `harness.train.main` once per seed in one process; without this cache every
repeat read and parsed the CIFAR files again and padded the training split again (docs/data_pipeline.md,
"Plans ahead of time, and the data kept across repeats", has the measured saving per repeat).

What makes it safe:
  * **Never another data set.** An entry is served only while every file it was read from is unchanged:
    path, size, mtime (ns), inode and device, taken before the read. A change within the filesystem's
    timestamp tick of the read leaves all of those as they were (git's "racily clean" case), so an entry
    read from a file modified less than `RACY_S` before the read also keeps a content hash of the files,
    and every lookup of it compares the hash too. CIFAR files unpacked long before a run are never racy
    (no hashing: about 0.5 s for CIFAR-10's 184 MB on the 2-core CPU, docs/data_pipeline.md); the small
    files a test has just written are, and cost nothing to hash.
  * **Bounded.** One data set at a time: asking for another (or for the same one after its files
    changed) frees the first and everything derived from it. Derived tensors: one per key, and at most
    `DERIVED_MAX` of them (a run pads at most three splits: train, val, test), least recently used first.
  * **Derived only from arrays it owns.** `derived(images, key, make)` caches `make()` only when `images`
    is a view of one of the cached data set's image arrays (which the cache keeps alive, so their address
    names them); the key is that array, the view's byte offset, shape and strides, and the caller's key
    (padding, mode, device). Any other array is handed to `make()` every time.

The cached arrays are shared by every caller: nothing in the harness writes into them (views and copies
only), and nothing may. `CACHE.reads` and `CACHE.derivations` count the disk reads and the derived
tensors made (the tests count work with them, never time), and `CACHE.clear()` frees everything.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# A file modified this recently before it was read is "racy": its stat may not change when it is
# modified again within the same timestamp tick (1-10 ms on Linux; 2 s on FAT; NFS takes the server's
# clock), so its entry is checked by content too.
RACY_S = 2.0
DERIVED_MAX = 3


def _stat(path: Path) -> tuple:
    s = os.stat(path)
    return (str(path), s.st_size, s.st_mtime_ns, s.st_ino, s.st_dev)


def _digest(paths: Sequence[Path]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        h.update(str(p).encode() + b"\0" + Path(p).read_bytes())
    return h.hexdigest()


@dataclass
class _Entry:
    key: tuple
    stats: tuple
    digest: str | None  # the files' content hash when they were racy at the read, else None
    value: object  # what `read` returned
    arrays: tuple  # the value's image arrays, owned by this entry: what `derived` recognises
    derived: OrderedDict = field(default_factory=OrderedDict)


class DataCache:
    """One data set and its derived tensors (module docstring); the process's instance is `CACHE`."""

    def __init__(self):
        self._entry: _Entry | None = None
        self.reads = 0  # data sets read from disk (cache misses of `dataset`)
        self.derivations = 0  # tensors made by `derived`'s `make` for a cached array

    def clear(self) -> None:
        self._entry = None

    def dataset(self, key: tuple, files: Sequence[Path], read: Callable[[], object],
                arrays: Callable[[object], tuple]) -> object:
        """`read()`'s result for `key` over `files`, from the cache while the files are unchanged (module
        docstring), else read now (and cached, replacing whatever was). `arrays(value)` names the image
        arrays that `derived` may key on."""
        files = [Path(f) for f in files]
        stats = tuple(_stat(f) for f in files)  # before the read: a change during it shows up next time
        e = self._entry
        if e is not None and e.key == key and e.stats == stats and (e.digest is None or e.digest == _digest(files)):
            return e.value
        self._entry = None  # free the old data set (and its device tensors) before reading the new one
        racy = any(s[2] >= time.time_ns() - RACY_S * 1e9 for s in stats)
        digest = _digest(files) if racy else None
        value = read()
        self.reads += 1
        self._entry = _Entry(key, stats, digest, value, tuple(arrays(value)))
        return value

    def derived(self, images: np.ndarray, key: tuple, make: Callable[[], object]) -> object:
        """`make()` for `images` and `key`, made once per (view of a cached array, key) and then served
        from the cache; for an array the cache does not own, `make()` every time."""
        e = self._entry
        if e is None or not isinstance(images, np.ndarray):
            return make()
        owner = images if images.base is None else images.base  # numpy points every view at the owner
        which = next((i for i, a in enumerate(e.arrays) if a is owner), None)
        if which is None:
            return make()
        offset = images.__array_interface__["data"][0] - owner.__array_interface__["data"][0]
        full = (which, offset, images.shape, images.strides, images.dtype.str, *key)
        if full in e.derived:
            e.derived.move_to_end(full)
            return e.derived[full]
        value = make()
        self.derivations += 1
        e.derived[full] = value
        while len(e.derived) > DERIVED_MAX:
            e.derived.popitem(last=False)
        return value


CACHE = DataCache()
