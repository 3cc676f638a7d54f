"""Provenance: what ran, where and how: the git commit, library versions, devices, the process count, the
command line, the launcher, the thread count and the environment variables that set them; and a device's
peak memory. Shared by every tool that records a figure (train, bench, campaign, report).

It also holds the one rule for CPU threads (`default_threads`, `set_threads`), because a thread count is
only worth recording if every tool chooses it the same way. On this project's 2-core CPU, shared with
other jobs, one lenet5 run measured 1583, 6286 and 709 images/s with OMP_NUM_THREADS unset, 1 and 2, and
the ddp suite's plain lenet5 step took 2.5 ms with one thread and 54-200 ms with two: a thread that waits
at an OpenMP barrier for a core someone else holds stalls the whole step. So on a CPU every process gets
one thread (the figure no longer depends on the machine's other load, and 1 and N processes compare like
with like); on a GPU machine each process gets the cores it may use over the processes on the node.
"""
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


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """The cores this process may run on (a Slurm or taskset allocation, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(device_type: str, local_processes: int = 1) -> int:
    """Threads per process: 1 on a CPU (see the module docstring), cores / local processes on a GPU node."""
    if device_type != "cuda":
        return 1
    return max(1, usable_cores() // max(1, local_processes))


def set_threads(n: int, set_by: str) -> dict:
    """Fix this process's CPU threads at `n`: torch's intra-op pool and OMP/MKL_NUM_THREADS (which the
    processes it starts, DataLoader and compile workers, inherit). Returns `threads()`."""
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    os.environ["HARNESS_THREADS_SET_BY"] = set_by
    return threads()


def threads() -> dict:
    """The thread count this process runs with and what set it: torch's pools, the OMP/MKL variables (as
    the launcher or the tool left them), and the tool that fixed them (None: nobody, torch's default)."""
    return {"torch_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            **{var: os.environ.get(var) for var in THREAD_VARS},
            "set_by": os.environ.get("HARNESS_THREADS_SET_BY")}


def launcher() -> str:
    """How this process was started: 'accelerate launch (torchrun)', 'accelerate launch', 'torchrun' or
    'python', with ', Slurm job N' under Slurm. accelerate's launcher always exports
    ACCELERATE_MIXED_PRECISION; torchrun (which accelerate uses for several processes) TORCHELASTIC_RUN_ID."""
    env = os.environ
    accelerate, elastic = "ACCELERATE_MIXED_PRECISION" in env, "TORCHELASTIC_RUN_ID" in env
    name = ("accelerate launch (torchrun)" if accelerate and elastic else "accelerate launch" if accelerate
            else "torchrun" if elastic else "python")
    return name + (f", Slurm job {env['SLURM_JOB_ID']}" if env.get("SLURM_JOB_ID") else "")


def provenance(world_size: int, device: torch.device) -> dict:
    return {
        "git_sha": git_sha(),
        "versions": library_versions(),
        "devices": device_names(),
        "device": str(device),
        "world_size": world_size,
        "command": [sys.executable] + sys.argv,
        "launcher": launcher(),
        "threads": threads(),
        "launcher_env": {k: v for k, v in os.environ.items()
                         if k.startswith(("ACCELERATE_", "SLURM_JOB", "SLURM_NNODES", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                                          "MASTER_ADDR", "TORCHELASTIC_RUN_ID", *THREAD_VARS))},
        "host": socket.gethostname(),
        "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
