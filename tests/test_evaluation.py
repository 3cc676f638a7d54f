"""Evaluation you can see, size and trust: top-5 and a named test subset in the same pass, exact across
ranks; the subset file (data.test_subset, cifar10_pack.py's test_exact.json) and its errors;
train.eval_limit and its refusal for published figures; the progress display on and off a terminal;
patch whitening on the device against a float64 NumPy computation; all of it through a real run on small
files the tests write, with a subset file beside them."""
from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import FAST, make_cifar, run_harness
from harness import config as C
from harness.data.cifar import DataError, Dataset, Split, attach_test_subset, random_split, select_classes
from harness.data.loaders import build_loader, normalise
from harness.run import metrics
from harness.stats import proportion_interval
from harness.training import evaluate as E
from harness.training.checks import check_config


class _Rank:
    """The Accelerator members evaluate() uses, for rank r of a world simulated in one process: `reduce`
    adds the other ranks' vectors, recorded from their own calls (`seen`)."""

    device = torch.device("cpu")

    def __init__(self, others: list[torch.Tensor] | None = None):
        self.others, self.seen = others or [], None

    def autocast(self):
        return torch.autocast("cpu", enabled=False)

    def reduce(self, t, op):
        assert op == "sum"
        self.seen = t.clone()
        return t + sum(self.others) if self.others else t


def _model(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes)).eval()


def _evaluate_world(model, split: Split, mask: np.ndarray | None, world: int, batch: int, num_classes: int = 10,
                    **kw) -> dict:
    """evaluate() on `world` ranks' loaders (rank 0 last, summing the others' vectors, as the all-reduce)."""
    seen = []
    for rank in [*range(1, world), 0]:
        loader = build_loader("torch", split.images, split.labels, batch, train=False, rank=rank, world=world,
                              channels_last=False)
        acc = _Rank(seen if rank == 0 else None)
        flags = E.subset_flags(loader, mask) if mask is not None else None
        out = E.evaluate(model, loader, acc, num_classes, subset=flags, **kw)
        seen.append(acc.seen)
    return out


def _by_hand(model, split: Split, mask: np.ndarray) -> dict:
    with torch.no_grad():
        logits = model(normalise(split.images))
    y = torch.from_numpy(split.labels)
    hit = logits.argmax(1) == y
    top5 = (logits.topk(5, 1).indices == y[:, None]).any(1)
    m = torch.from_numpy(mask)
    return {"acc": hit.double().mean().item(), "top5": top5.double().mean().item(),
            "subset_acc": hit[m].double().mean().item(), "subset_n": int(m.sum())}


# ---- top-5 and the subset: the same pass, exact over ranks ---------------------------------------------


@pytest.mark.parametrize("world, batch", [(1, 64), (2, 7), (3, 5)])
def test_top5_and_subset_accuracy_are_exact_over_ranks(world, batch):
    split = random_split(53, 10, seed=3)  # 53 images: every world size pads its last batches with -1
    mask = np.zeros(53, dtype=bool)
    mask[np.random.default_rng(0).choice(53, 19, replace=False)] = True
    model = _model()
    want = _by_hand(model, split, mask)
    got = _evaluate_world(model, split, mask, world, batch)
    assert got["n"] == 53 and got["subset_n"] == want["subset_n"] == 19  # each image counted once
    assert got["acc"] == pytest.approx(want["acc"], abs=1e-12)
    assert got["top5"] == pytest.approx(want["top5"], abs=1e-12)
    assert got["subset_acc"] == pytest.approx(want["subset_acc"], abs=1e-12)
    assert want["top5"] > want["acc"]  # top-5 is a different number, not top-1 again
    assert got["seconds"] > 0


def test_top5_is_none_with_five_classes_or_fewer_and_the_subset_none_without_one():
    split = random_split(20, 5, seed=1)
    out = _evaluate_world(_model(5), split, None, 1, 8, num_classes=5)
    assert out["top5"] is None  # always 1 with 5 classes: not reported
    assert out["subset_acc"] is None and out["subset_n"] is None


def test_epoch_rows_and_wandb_names_hold_top5_and_the_subset():
    res = {"acc": 0.5, "loss": 1.0, "n": 10, "top5": 0.9, "subset_acc": 0.6, "subset_n": 5}
    row = metrics.epoch_row(1, 10, 1.0, 0.4, {"test": res, "val": {**res, "top5": 0.8}}, 0.1, 1.0, 100.0, 1.0)
    logged = metrics.to_wandb(row)
    assert (logged["test/top5"], logged["val/top5"], logged["test/subset_acc"]) == (0.9, 0.8, 0.6)
    no_subset = metrics.epoch_row(1, 10, 1.0, 0.4, {"test": {**res, "subset_n": None}}, 0.1, 1.0, 100.0, 1.0)
    assert "test_subset_acc" not in no_subset


def test_wilson_interval_of_a_proportion():
    low, high = proportion_interval(0.94, 1000)
    assert low < 0.94 < high and high - low == pytest.approx(0.0296, abs=0.001)  # about ±1.4 points
    assert proportion_interval(1.0, 10)[1] <= 1.0 and proportion_interval(0.0, 10)[0] == 0.0  # inside [0, 1]
    assert proportion_interval(0.0, 10)[1] > 0.2  # 0 of 10 does not mean 0%
    assert proportion_interval(0.5, 0) is None


# ---- the subset file ------------------------------------------------------------------------------------


def _dataset(n_test: int = 40, name: str = "cifar10", source: str = "files") -> Dataset:
    return Dataset(name, random_split(8, 10, 0), random_split(n_test, 10, 1), 10, [str(i) for i in range(10)], source)


def test_subset_file_auto_beside_the_data_a_path_or_none(tmp_path):
    (tmp_path / "test_exact.json").write_text(json.dumps(  # what cifar10_pack.py unpack writes
        {"dataset": "cifar10", "split": "test", "indices": [3, 1, 2], "note": "..."}))
    ds = attach_test_subset(_dataset(), "auto", tmp_path)
    assert np.flatnonzero(ds.test_subset).tolist() == [1, 2, 3] and ds.test_subset_name.endswith("test_exact.json")
    for off in ("none", ""):
        assert attach_test_subset(_dataset(), off, tmp_path).test_subset is None
    assert attach_test_subset(_dataset(), "auto", tmp_path / "elsewhere").test_subset is None  # no file: none
    assert attach_test_subset(_dataset(name="cifar100"), "auto", tmp_path).test_subset is None  # not its data
    assert attach_test_subset(_dataset(source="synthetic"), "auto", tmp_path).test_subset is None
    listed = tmp_path / "mine.json"
    listed.write_text("[0, 39]")  # a bare list
    assert np.flatnonzero(attach_test_subset(_dataset(), str(listed), tmp_path).test_subset).tolist() == [0, 39]


@pytest.mark.parametrize("content, needle", [
    ("[0, 40]", "index 40 is outside the test set's 0..39"),
    ("[1, 1]", "lists an index twice"),
    ('{"dataset": "cifar100", "indices": [1]}', "is for dataset 'cifar100'"),
    ('{"split": "train", "indices": [1]}', "is for split 'train'"),
    ('[1.5]', "no list of integer indices"),
    ("{", "cannot be read as JSON"),
    (None, "no such file"),
])
def test_a_bad_subset_file_is_one_clear_error(tmp_path, content, needle):
    path = tmp_path / "subset.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=needle) as e:
        attach_test_subset(_dataset(), str(path), tmp_path)
    assert "data.test_subset=none" in str(e.value)  # and the way out


def test_the_subset_follows_data_classes():
    ds = _dataset(60)
    mask = np.zeros(60, dtype=bool)
    mask[::3] = True
    sub = select_classes(Dataset(**{**ds.__dict__, "test_subset": mask}), [2, 5])
    kept = np.isin(ds.test.labels, [2, 5])
    assert sub.test_subset.tolist() == mask[kept].tolist() and len(sub.test_subset) == len(sub.test)


# ---- train.eval_limit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe, overrides, refused", [
    (None, ["train.eval_limit=100"], None),
    ("configs/speed94.yaml", ["train.eval_limit=100", "train.epochs=1"], None),  # a smoke run of the recipe
    ("configs/speed94.yaml", ["train.eval_limit=100", "train.repeats=10"], "train.repeats=10"),
    ("configs/fast_resnet18.yaml", ["train.eval_limit=100"], "train.target_acc=0.94"),
    ("configs/fast_resnet18.yaml", ["train.eval_limit=100", "train.target_acc=0"], None),
    (None, ["train.eval_limit=-1"], "train.eval_limit=-1: must be at least 0"),
])
def test_eval_limit_is_refused_where_a_figure_is_published(recipe, overrides, refused):
    cfg = C.load(C.Config, recipe, overrides)
    if refused is None:
        check_config(cfg, world=1)
    else:
        with pytest.raises(C.ConfigError, match=refused.replace(".", r"\.")):
            check_config(cfg, world=1)


# ---- the progress display ------------------------------------------------------------------------------


EVERY_S = E.EVAL_LINE_EVERY_S  # the default, before a test changes it


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _progress_run(monkeypatch, stream, every_s: float) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(E, "EVAL_LINE_EVERY_S", every_s)
    split = random_split(30, 10, seed=2)
    _evaluate_world(_model(), split, None, 1, 8, progress=True, name="test")  # 4 batches
    return stream.getvalue()


def test_evaluation_progress_off_a_terminal_is_whole_lines(monkeypatch):
    out = _progress_run(monkeypatch, io.StringIO(), every_s=0.0)  # a line at every batch
    assert "\r" not in out
    lines = out.splitlines()
    assert lines[0].startswith("eval test 1/4") and lines[-1].startswith("eval test 4/4") and "batch/s" in out
    # at the default interval a quick evaluation prints nothing: no line per epoch in a job's log
    assert _progress_run(monkeypatch, io.StringIO(), every_s=EVERY_S) == ""


def test_evaluation_progress_on_a_terminal_is_a_bar_that_goes(monkeypatch):
    out = _progress_run(monkeypatch, _Terminal(), every_s=0.0)
    assert "eval test" in out and "\r" in out  # tqdm redraws in place ...
    assert out.endswith("\r") and out.split("\r")[-2].strip() == ""  # ... and blanks its line when done


def test_evaluation_progress_is_silent_when_not_asked(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    _evaluate_world(_model(), random_split(30, 10, seed=2), None, 1, 8, progress=False)
    assert sys.stderr.getvalue() == ""


# ---- patch whitening on the device ----------------------------------------------------------------------


def _photos(n: int = 200, seed: int = 0) -> np.ndarray:
    """uint8 NHWC images with correlated neighbouring pixels and unequal channel statistics."""
    g = np.random.default_rng(seed)
    smooth = np.kron(g.normal(size=(n, 8, 8, 3)), np.ones((1, 4, 4, 1)))
    smooth += 0.3 * g.normal(size=smooth.shape) + np.array([0.5, -0.2, 0.1])
    smooth[..., 1] *= 0.7
    return np.clip(128 + 40 * smooth, 0, 255).astype(np.uint8)


def _numpy_filters(images: np.ndarray, eps: float, k: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The float64 host computation, independently: the patch covariance from explicit windows, NumPy's
    eigh, largest eigenvalue first, each eigenvector's largest entry positive: (filters (d, d) one per
    row, eigenvalues, covariance)."""
    x = normalise(images, torch.float64).numpy()  # (n, c, h, w)
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))  # (n, c, h', w', k, k)
    patches = windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, 3 * k * k)
    cov = patches.T @ patches / len(patches)
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1], vectors[:, ::-1]
    vectors = vectors * np.sign(vectors[np.abs(vectors).argmax(0), np.arange(len(values))])
    return (vectors / np.sqrt(values + eps)).T, values, cov


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_whitening_on_the_device_agrees_with_the_float64_host_computation(device):
    """The filters computed on `device` (float64 there) equal the float64 NumPy result to 1e-9 of their
    largest entry, the sign convention included (the solvers differ only in rounding, ~1e-15); W^T W =
    (C + eps)^-1 as well, which holds whatever basis a solver picks; and init_whitening writes exactly
    those filters, in the conv's dtype, from the images copied to the conv's device."""
    from harness.models import create_model
    from harness.training.whiten import init_whitening, patch_covariance, whitening_filters

    images, eps = _photos(), 5e-4
    want, values, cov_host = _numpy_filters(images, eps)
    assert (-np.diff(values) / values[:-1]).min() > 1e-3  # distinct eigenvalues: vectors defined up to sign
    cov = patch_covariance(normalise(torch.from_numpy(images).to(device), torch.float64), (2, 2))
    w = whitening_filters(cov, 24, (2, 2), 3, eps)
    assert w.device.type == device and w.dtype == torch.float64
    w = w.cpu().reshape(24, -1).numpy()
    tol = 1e-9 * np.abs(want).max()
    np.testing.assert_allclose(w[:12], want, rtol=0, atol=tol)
    np.testing.assert_allclose(w[12:], -want, rtol=0, atol=tol)  # and their negatives
    np.testing.assert_allclose(np.linalg.inv(w[:12].T @ w[:12]) - eps * np.eye(12), cov_host, rtol=0, atol=1e-9)

    model = create_model("airnet").to(device)
    conv = init_whitening(model, images, eps=eps)
    assert conv.weight.device.type == device and not conv.weight.requires_grad
    assert torch.equal(conv.weight.detach().cpu().reshape(24, -1), torch.from_numpy(w).float())


# ---- through a real run: small files with a subset file beside them ---------------------------------------


def test_a_run_reports_the_subset_beside_the_whole_test_set_and_eval_limit_cuts_both(tmp_path):
    """Data as cifar10_pack.py unpack leaves it (the binary files and test_exact.json beside them): the
    summary holds the subset's accuracy, size and interval, equal to the saved model's by hand, beside the
    whole test set's and its top-5; train.eval_limit=N evaluates the first N images only and says so."""
    from harness.data.cifar import load_dataset
    from harness.models import load_run

    root = make_cifar(tmp_path / "data", n_train=320, n_test=150, learnable=True)
    subset = sorted(np.random.default_rng(1).choice(150, 60, replace=False).tolist())
    (root / "test_exact.json").write_text(json.dumps({"dataset": "cifar10", "split": "test", "indices": subset}))
    common = [*FAST, f"data.root={root}", "train.epochs=2", "train.eval_batch_size=32"]
    proc = run_harness([*common, f"run.dir={tmp_path / 'full'}"])
    s = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert s["test_images"] == 150 and s["eval_limit"] is None
    assert s["test_subset"] == str(root / "test_exact.json") and s["test_subset_images"] == 60

    test = load_dataset("cifar10", root, verify="structure").test
    with torch.no_grad():
        logits = load_run(tmp_path / "full")(normalise(test.images))
    y = torch.from_numpy(test.labels)
    hit = (logits.argmax(1) == y).numpy()
    assert s["test_acc"] == pytest.approx(hit.mean(), abs=1e-12)
    assert s["test_subset_acc"] == pytest.approx(hit[subset].mean(), abs=1e-12)
    assert s["test_top5"] == pytest.approx((logits.topk(5, 1).indices == y[:, None]).any(1).double().mean().item())
    assert (s["test_subset_ci95_low"], s["test_subset_ci95_high"]) == pytest.approx(
        proportion_interval(hit[subset].mean(), 60))
    epochs = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in epochs if r["kind"] == "epoch"][-1]
    assert (last["test_subset_acc"], last["test_top5"]) == (s["test_subset_acc"], s["test_top5"])
    assert "test subset" in proc.stdout and "on 60 images (95% interval" in proc.stdout
    assert s["time_s_with_final_eval"] > s["time_s"] > 0  # the final evaluation, timed on its own

    run_harness([*common, f"run.dir={tmp_path / 'limited'}", "train.eval_limit=40", "data.val_size=64"])
    lim = json.loads((tmp_path / "limited" / "summary.json").read_text())
    assert lim["eval_limit"] == 40 and lim["test_images"] == 40
    assert lim["test_subset_images"] == sum(i < 40 for i in subset)  # the subset within the first 40
    assert lim["val_acc"] is not None and lim["val_top5"] is not None
    off = run_harness([*common, f"run.dir={tmp_path / 'off'}", "data.test_subset=none", "train.max_steps=1"])
    assert json.loads((tmp_path / "off" / "summary.json").read_text())["test_subset"] is None
    assert "test subset" not in off.stdout
