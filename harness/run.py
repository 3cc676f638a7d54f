"""The run directory and tracking: provenance, metrics (console, JSONL, W&B from one place).

Layout of `run.dir`:
  config.yaml         the resolved config
  provenance.json     git SHA, library versions, devices, world size, command line, host, start time
  metrics.jsonl       one JSON object per line: kind "step" rows at run.log_every, kind "epoch" rows
  summary.json        the final numbers (test_acc, val_acc, wall_s, train_images_per_s, ...)
  checkpoints/        step-NNNNNNN/ (accelerate save_state folders) and `latest`, a one-line pointer
  wandb/              the W&B run (offline unless a W&B key is configured)

Checkpoints are `harness.checkpoint`'s. Only the main process writes files here, except accelerate's
per-rank RNG states.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parent.parent


def default_run_dir(model: str) -> str:
    return str(Path("runs") / f"{model}-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}")


def git_sha() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("-dirty" if dirty else "")) if sha else None


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


def record_provenance(path: Path, current: dict) -> None:
    """The first start of a run directory is its provenance; each later start (a resume, a requeued job)
    is appended under "restarts", so the original command and versions are never lost."""
    if path.is_file():
        first = json.loads(path.read_text())
        first.setdefault("restarts", []).append(current)
        current = first
    write_json(path, current)


def write_json(path: Path, obj) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ----------------------------------------------------------------------------------------------------
# tracking


def wandb_mode() -> str:
    """online only when a key is configured; nothing may need a login or a network."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


class Tracker:
    """Rank-0 I/O: metrics.jsonl, W&B (through accelerate's trackers), console lines."""

    def __init__(self, run_dir: Path, accelerator, cfg):
        self.acc = accelerator
        self.main = accelerator.is_main_process
        self.path = run_dir / "metrics.jsonl"
        self.use_wandb = cfg.run.wandb
        if self.use_wandb:
            from harness.config import to_dict

            os.environ.setdefault("WANDB_MODE", wandb_mode())
            accelerator.init_trackers(cfg.run.wandb_project, config=to_dict(cfg), init_kwargs={"wandb": {
                "dir": str(run_dir), "name": cfg.run.name or run_dir.name, "group": cfg.run.wandb_group or None}})
        self._file = open(self.path, "a") if self.main else None

    def log(self, row: dict) -> None:
        if not self.main:
            return
        self._file.write(json.dumps(row, default=float) + "\n")
        self._file.flush()
        if self.use_wandb:
            kind = row.get("kind", "step")
            self.acc.log({f"{kind}/{k}": v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"},
                         step=int(row["step"]))

    def close(self) -> None:
        if self._file:
            self._file.close()
