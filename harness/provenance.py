"""Provenance: what ran, where and how: the git commit, library versions, devices, the process count, the
command line and the environment that set the launcher and the thread count; and a device's peak memory.
Shared by every tool that records a figure (train, bench, campaign, report)."""
from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


COMMIT_FILE = REPO / ".harness-commit"  # git-ignored; written where the code is copied without .git


def git_sha() -> str | None:
    """The checkout's commit, with `-dirty` when tracked files differ from it. Where the code travelled
    without its .git (a copy sent to a GPU machine), the commit recorded when the copy was made:
    `python -c "from harness.provenance import git_sha; print(git_sha())" > .harness-commit` at the root
    (docs/benchmarks/campaign.md); it is then marked `(from .harness-commit)`."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = dirty = ""
    if sha:
        return sha + ("-dirty" if dirty else "")
    try:
        recorded = COMMIT_FILE.read_text().split()
    except OSError:
        return None
    return f"{recorded[0]} (from {COMMIT_FILE.name})" if recorded and recorded[0] != "None" else None


def library_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("torch", "torchvision", "accelerate", "wandb", "numpy", "nvidia-dali-cuda130", "harness"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    out["cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return out


def device_names() -> list[str]:
    if torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"]


def provenance(world_size: int, device: torch.device) -> dict:
    return {
        "git_sha": git_sha(),
        "versions": library_versions(),
        "devices": device_names(),
        "device": str(device),
        "world_size": world_size,
        "command": [sys.executable] + sys.argv,
        "launcher_env": {k: v for k, v in os.environ.items()
                         if k.startswith(("ACCELERATE_", "SLURM_JOB", "SLURM_NNODES", "WORLD_SIZE", "MASTER_ADDR"))},
        "host": socket.gethostname(),
        "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
