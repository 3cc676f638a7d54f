"""CIFAR-10/100 on disk: find, verify, download and read the official files into uint8 arrays.

Both official formats are read:
  * the python version (`cifar-10-batches-py/`, `cifar-100-python/`): pickled dicts, checked against
    torchvision's md5 list (torchvision owns those checksums; we read them from its dataset classes);
  * the binary version (`cifar-10-batches-bin/`, `cifar-100-binary/`): fixed-size records
    (<label> + 3072 bytes for CIFAR-10, <coarse><fine> + 3072 for CIFAR-100), checked for the official
    file sizes and for a valid label in every record.
`data.verify=structure` relaxes the md5/size checks to structure only (any whole number of records, the
right pickle keys and shapes): for re-encoded copies and the small files the tests write.

Everything returned is host memory: images (N, 32, 32, 3) uint8 HWC, labels (N,) int64. Moving it to the
device and augmenting it is the loaders' job (harness/data/loaders.py). `load_dataset` reads the files
once per process while they are unchanged (harness/data/cache.py): the arrays it returns are shared, and
nobody writes into them.

A named subset of the test set (`data.test_subset`, `attach_test_subset`): a JSON file of test-image indices
whose accuracy the run reports beside the whole test set's. By default (`auto`) the `test_exact.json`
that `cifar10_pack.py unpack` writes beside the data: this project's packed test set has only images
0-999 bit-exact (1000-9999 are JPEG-recovered and score about 7 points lower at the 94% level), so the
accuracy comparable with published CIFAR-10 figures is the one on that subset.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.cache import CACHE
from harness.errors import UserError

IMAGE_BYTES = 3 * 32 * 32


class DataError(UserError):
    pass


@dataclass
class Split:
    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def first(self, n: int) -> Split:
        """The first `n` images (all of them for n <= 0): train.eval_limit's cut."""
        return self if n <= 0 else Split(self.images[:n], self.labels[:n])


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    classes: list[str]
    source: str  # the directory the files came from
    test_subset: np.ndarray | None = None  # (len(test),) bool: the test images of data.test_subset
    test_subset_name: str = ""  # the file those indices came from


def _torchvision_cls(dataset: str):
    from torchvision.datasets import CIFAR10, CIFAR100

    return CIFAR10 if dataset == "cifar10" else CIFAR100


# Layout of each format: directory name, train files, test files; record = label bytes + image bytes.
BINARY = {
    "cifar10": dict(dir="cifar-10-batches-bin", train=[f"data_batch_{i}.bin" for i in range(1, 6)],
                    test=["test_batch.bin"], label_bytes=1, records=10000, classes=10),
    "cifar100": dict(dir="cifar-100-binary", train=["train.bin"], test=["test.bin"], label_bytes=2,
                     records=None, classes=100),  # train.bin 50000 records, test.bin 10000
}
CIFAR100_RECORDS = {"train.bin": 50000, "test.bin": 10000}


def _python_layout(dataset: str) -> dict:
    cls = _torchvision_cls(dataset)
    return dict(dir=cls.base_folder, train=cls.train_list, test=cls.test_list, meta=cls.meta,
                label_key="labels" if dataset == "cifar10" else "fine_labels",
                classes=10 if dataset == "cifar10" else 100)


def _where_to_put(dataset: str, root: Path) -> str:
    py = _python_layout(dataset)
    b = BINARY[dataset]
    cls = _torchvision_cls(dataset)
    return (
        f"Put the python version in {root / py['dir']}/ (files {', '.join(n for n, _ in py['train'] + py['test'])}, "
        f"{py['meta']['filename']}; from {cls.url}) or the binary version in {root / b['dir']}/ "
        f"(files {', '.join(b['train'] + b['test'])}), or set data.root to the folder that holds them, "
        f"or let the harness download them (data.download=true, online). `make data` does either for data/."
    )


# ----------------------------------------------------------------------------------------------------
# binary version


def _read_binary(path: Path, dataset: str, expected_records: int | None, verify: str) -> Split:
    b = BINARY[dataset]
    rec = b["label_bytes"] + IMAGE_BYTES
    size = path.stat().st_size
    if verify == "official" and expected_records is not None and size != expected_records * rec:
        raise DataError(
            f"{path} has {size} bytes, the official file has {expected_records * rec} "
            f"({expected_records} records of {rec} bytes): it is damaged or truncated. Delete it and "
            f"unpack or download it again (or set data.verify=structure for a deliberately smaller copy)."
        )
    if size == 0 or size % rec:
        raise DataError(
            f"{path} has {size} bytes, not a whole number of {rec}-byte records: it is damaged or "
            f"truncated. Delete it and unpack or download it again."
        )
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, rec)
    label = raw[:, b["label_bytes"] - 1].astype(np.int64)  # CIFAR-100: <coarse><fine>, we train on fine
    bad = np.flatnonzero(label >= b["classes"])
    if len(bad):
        raise DataError(
            f"{path}: record {bad[0]} has label {label[bad[0]]}, outside 0..{b['classes'] - 1}: the record "
            f"structure is broken (damaged file, or a {dataset} file from another data set). Replace it."
        )
    if b["label_bytes"] == 2 and int(raw[:, 0].max()) >= 20:
        raise DataError(f"{path}: a coarse label is outside 0..19: the record structure is broken. Replace it.")
    images = raw[:, b["label_bytes"]:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(np.ascontiguousarray(images), label)


def _load_binary(root: Path, dataset: str, verify: str) -> tuple[Split, Split, list[str]]:
    b = BINARY[dataset]
    d = root / b["dir"]
    splits = []
    for names in (b["train"], b["test"]):
        parts = []
        for n in names:
            records = b["records"] or CIFAR100_RECORDS[n]
            parts.append(_read_binary(d / n, dataset, records, verify))
        splits.append(Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts])))
    meta = d / ("batches.meta.txt" if dataset == "cifar10" else "fine_label_names.txt")
    classes = [c for c in meta.read_text().split() if c] if meta.is_file() else []
    return splits[0], splits[1], classes


# ----------------------------------------------------------------------------------------------------
# python version


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:  # truncated or foreign file: any unpickling error means the same thing
        raise DataError(f"{path} cannot be read as a CIFAR pickle ({type(e).__name__}: {e}): it is damaged. "
                        f"Delete it and unpack or download it again.") from None


def _load_python(root: Path, dataset: str, verify: str) -> tuple[Split, Split, list[str]]:
    from torchvision.datasets.utils import check_integrity

    py = _python_layout(dataset)
    d = root / py["dir"]
    if verify == "official":
        for name, md5 in py["train"] + py["test"] + [(py["meta"]["filename"], py["meta"]["md5"])]:
            if not check_integrity(str(d / name), md5):
                raise DataError(
                    f"{d / name} does not match torchvision's md5 {md5}: the file is damaged or not the "
                    f"official one. Delete it and download or unpack it again; for a re-encoded copy (such as "
                    f"cifar10_pack.py --format py) set data.verify=structure."
                )
    splits = []
    for files in (py["train"], py["test"]):
        images, labels = [], []
        for name, _ in files:
            entry = _unpickle(d / name)
            try:
                x = np.asarray(entry["data"], dtype=np.uint8)
                y = np.asarray(entry[py["label_key"]], dtype=np.int64)
            except (KeyError, TypeError):
                raise DataError(f"{d / name} lacks the keys 'data' and '{py['label_key']}': it is not a "
                                f"{dataset} python batch. Replace it.") from None
            if x.ndim != 2 or x.shape[1] != IMAGE_BYTES or len(x) != len(y) or len(y) == 0:
                raise DataError(f"{d / name}: data has shape {x.shape} for {len(y)} labels, expected "
                                f"(N, {IMAGE_BYTES}) with one label per row: the file is damaged. Replace it.")
            if y.min() < 0 or y.max() >= py["classes"]:
                raise DataError(f"{d / name}: labels outside 0..{py['classes'] - 1}: the file is damaged.")
            images.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(y)
        splits.append(Split(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)))
    meta_path = d / py["meta"]["filename"]
    classes = list(_unpickle(meta_path)[py["meta"]["key"]]) if meta_path.is_file() else []
    return splits[0], splits[1], classes


# ----------------------------------------------------------------------------------------------------


def present(root: str | os.PathLike, dataset: str) -> dict[str, bool]:
    """{'bin': every file of the binary version is under root, 'py': every file of the python version}."""
    root = Path(root)
    py = _python_layout(dataset)
    b = BINARY[dataset]
    return {
        "bin": all((root / b["dir"] / n).is_file() for n in b["train"] + b["test"]),
        "py": all((root / py["dir"] / n).is_file() for n, _ in py["train"] + py["test"]),
    }


def download(root: Path, dataset: str) -> None:
    """Fetch and unpack the python version with torchvision's own downloader (md5-checked)."""
    import socket
    import urllib.error

    from torchvision.datasets.utils import download_and_extract_archive

    cls = _torchvision_cls(dataset)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # an unreachable host must fail in seconds, not hang a whole job
    try:
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise DataError(f"{dataset} is not under {root} and could not be downloaded ({e}). "
                        + _where_to_put(dataset, root)) from None
    finally:
        socket.setdefaulttimeout(old)


def load_dataset(dataset: str, root: str | os.PathLike, fmt: str = "auto", verify: str = "official",
                 allow_download: bool = False) -> Dataset:
    """Read train and test splits of `dataset` from `root` in format `fmt` (auto: bin, else py)."""
    if dataset not in BINARY:
        raise DataError(f"unknown dataset {dataset!r}; choose cifar10 or cifar100")
    root = Path(root)
    found = present(root, dataset)
    if fmt == "auto":
        fmt = "bin" if found["bin"] else "py" if found["py"] else ""
    if not fmt or not found[fmt]:
        if allow_download and fmt in ("", "py"):
            download(root, dataset)
            fmt = "py"
        else:
            what = {"bin": "the binary version", "py": "the python version"}.get(fmt, "CIFAR files")
            raise DataError(f"{what} of {dataset} is missing under {root} (data.download is off). "
                            + _where_to_put(dataset, root))
    folder = BINARY[dataset]["dir"] if fmt == "bin" else _python_layout(dataset)["dir"]

    def read() -> Dataset:
        train, test, classes = (_load_binary if fmt == "bin" else _load_python)(root, dataset, verify)
        num_classes = 10 if dataset == "cifar10" else 100
        if len(classes) != num_classes:
            classes = [str(i) for i in range(num_classes)]
        return Dataset(dataset, train, test, num_classes, classes, str(root / folder))

    # read once per process while the files are unchanged (cache.py): train.repeats' runs share it
    ds = CACHE.dataset(("cifar", dataset, fmt, verify, str(root.resolve())), _files(root, dataset, fmt), read,
                       lambda d: (d.train.images, d.test.images))
    # fresh wrappers around the shared arrays: a caller that reassigns a field leaves the cache as it was
    return Dataset(ds.name, Split(ds.train.images, ds.train.labels), Split(ds.test.images, ds.test.labels),
                   ds.num_classes, list(ds.classes), ds.source)


def _files(root: Path, dataset: str, fmt: str) -> list[Path]:
    """The files `load_dataset` reads for `fmt`: every data file, and the class names' file if present."""
    if fmt == "bin":
        b = BINARY[dataset]
        names, meta = b["train"] + b["test"], "batches.meta.txt" if dataset == "cifar10" else "fine_label_names.txt"
        d = root / b["dir"]
    else:
        py = _python_layout(dataset)
        names, meta, d = [n for n, _ in py["train"] + py["test"]], py["meta"]["filename"], root / py["dir"]
    return [d / n for n in names] + ([d / meta] if (d / meta).is_file() else [])


def select_classes(ds: Dataset, classes: list[int]) -> Dataset:
    """Only the images of `classes` (data.classes), relabelled 0..k-1 in the order given: e.g. train on
    classes 0-4 and fine-tune on 5-9. An empty list keeps every class."""
    if not classes:
        return ds
    bad = [c for c in classes if not 0 <= c < ds.num_classes]
    if bad or len(set(classes)) != len(classes):
        raise DataError(f"data.classes={classes}: distinct class indices in 0..{ds.num_classes - 1} of {ds.name} "
                        f"({'out of range: ' + str(bad) if bad else 'repeated'})")
    lookup = np.full(ds.num_classes, -1, dtype=np.int64)
    lookup[classes] = np.arange(len(classes))

    def keep(s: Split) -> Split:
        mask = lookup[s.labels] >= 0
        return Split(s.images[mask], lookup[s.labels[mask]])

    subset = ds.test_subset[lookup[ds.test.labels] >= 0] if ds.test_subset is not None else None
    return dataclasses.replace(ds, train=keep(ds.train), test=keep(ds.test), num_classes=len(classes),
                               classes=[ds.classes[c] for c in classes], test_subset=subset)


# ----------------------------------------------------------------------------------------------------
# a named subset of the test set (data.test_subset)

SUBSET_FILE = "test_exact.json"  # what cifar10_pack.py unpack writes beside cifar-10-batches-bin/


def read_test_subset(path: str | os.PathLike, dataset: str, n_test: int) -> np.ndarray:
    """The sorted test-image indices in `path`: a JSON list of integers, or an object whose "indices" hold
    them (cifar10_pack.py's test_exact.json, whose "dataset" and "split", when given, must name `dataset`
    and "test"). Every index in 0..n_test-1, none twice; anything else is a DataError naming the fix."""
    path = Path(path)
    fix = "point data.test_subset at a JSON list of test-image indices, or set data.test_subset=none"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"data.test_subset={path}: no such file; {fix}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"data.test_subset={path} cannot be read as JSON ({e}); {fix}") from None
    if isinstance(doc, dict):
        for key, want in (("dataset", dataset), ("split", "test")):
            if key in doc and doc[key] != want:
                raise DataError(f"data.test_subset={path} is for {key} {doc[key]!r}, this run's is {want!r}; {fix}")
        doc = doc.get("indices")
    if not isinstance(doc, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in doc):
        raise DataError(f"data.test_subset={path} holds no list of integer indices; {fix}")
    idx = np.asarray(doc, dtype=np.int64)
    bad = idx[(idx < 0) | (idx >= n_test)]
    if len(bad):
        raise DataError(f"data.test_subset={path}: index {bad[0]} is outside the test set's 0..{n_test - 1} "
                        f"(a file written for other data?); {fix}")
    if len(np.unique(idx)) != len(idx):
        raise DataError(f"data.test_subset={path} lists an index twice; {fix}")
    return np.sort(idx)


def attach_test_subset(ds: Dataset, setting: str, root: str | os.PathLike) -> Dataset:
    """`ds` with its test subset (data.test_subset): `auto` reads root/test_exact.json when it exists and
    is for this data set (cifar10_pack.py writes it for CIFAR-10; a synthetic data set has none), `none`
    or "" reads nothing, anything else is a file that must exist and fit (`read_test_subset`)."""
    if setting in ("", "none"):
        return ds
    if setting == "auto":
        path = Path(root) / SUBSET_FILE
        if ds.source == "synthetic" or not path.is_file():
            return ds
        try:
            if json.loads(path.read_text()).get("dataset", ds.name) != ds.name:  # cifar10's file beside cifar-100
                return ds
        except (OSError, ValueError, AttributeError):
            pass  # read_test_subset names what is wrong with it
    else:
        if ds.source == "synthetic":
            raise DataError(f"data.test_subset={setting} names test images of the CIFAR files, and "
                            f"data.backend=synthetic has none; set data.test_subset=none")
        path = Path(setting)
    mask = np.zeros(len(ds.test), dtype=bool)
    mask[read_test_subset(path, ds.name, len(ds.test))] = True
    return dataclasses.replace(ds, test_subset=mask, test_subset_name=str(path))


# ----------------------------------------------------------------------------------------------------
# writers: the tests (and anyone making a small fixture) write files in both official formats


def write_binary(root: str | os.PathLike, dataset: str, train: Split, test: Split) -> Path:
    """Write `train`/`test` as the official binary version (CIFAR-10: split into 5 train batches)."""
    b = BINARY[dataset]
    d = Path(root) / b["dir"]
    d.mkdir(parents=True, exist_ok=True)

    def records(split: Split) -> bytes:
        chw = split.images.transpose(0, 3, 1, 2).reshape(len(split), -1)
        labels = split.labels.astype(np.uint8)[:, None]
        if b["label_bytes"] == 2:
            labels = np.concatenate([labels // 5, labels], axis=1)  # a made-up coarse label in 0..19
        return np.concatenate([labels, chw], axis=1).astype(np.uint8).tobytes()

    for names, split in ((b["train"], train), (b["test"], test)):
        chunks = np.array_split(np.arange(len(split)), len(names))
        for n, idx in zip(names, chunks):
            (d / n).write_bytes(records(Split(split.images[idx], split.labels[idx])))
    meta = "batches.meta.txt" if dataset == "cifar10" else "fine_label_names.txt"
    (d / meta).write_text("\n".join(str(i) for i in range(b["classes"])) + "\n")
    return d


def write_python(root: str | os.PathLike, dataset: str, train: Split, test: Split) -> Path:
    """Write `train`/`test` as the python version (same keys as the official pickles)."""
    py = _python_layout(dataset)
    d = Path(root) / py["dir"]
    d.mkdir(parents=True, exist_ok=True)
    for files, split in ((py["train"], train), (py["test"], test)):
        chunks = np.array_split(np.arange(len(split)), len(files))
        for (name, _), idx in zip(files, chunks):
            entry = {"data": split.images[idx].transpose(0, 3, 1, 2).reshape(len(idx), -1),
                     py["label_key"]: split.labels[idx].tolist(), "batch_label": name}
            with open(d / name, "wb") as f:
                pickle.dump(entry, f)
    with open(d / py["meta"]["filename"], "wb") as f:
        pickle.dump({py["meta"]["key"]: [str(i) for i in range(py["classes"])]}, f)
    return d


def random_split(n: int, num_classes: int = 10, seed: int = 0) -> Split:
    """`n` random images with random labels: the content of small test fixtures."""
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8),
                 rng.integers(0, num_classes, size=n).astype(np.int64))
