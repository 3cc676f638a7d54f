"""The run directory and tracking: provenance, metrics (console, JSONL, W&B from one place).

Layout of `run.dir`:
  config.yaml         the resolved config
  provenance.json     git SHA, library versions, devices, world size, command line, host, start time
  metrics.jsonl       one JSON object per line: kind "step" rows at run.log_every, kind "epoch" rows
  summary.json        the final numbers (test_acc, val_acc, wall_s, train_images_per_s, ...)
  checkpoints/        step-NNNNNNN/ (accelerate save_state folders) and `latest`, a one-line pointer
  wandb/              the W&B run (offline unless W&B credentials are configured)
  wandb_id            the W&B run id: a resumed run continues the same W&B run

Checkpoints are `harness.checkpoint`'s. Only the main process writes files here, except accelerate's
per-rank RNG states.
"""
from __future__ import annotations

import configparser
import datetime as dt
import json
import netrc
import os
import platform
import secrets
import socket
import string
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

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
    """online only when W&B credentials are configured; nothing may need a login prompt or the network.

    WANDB_MODE wins. Otherwise this looks where wandb itself looks: WANDB_API_KEY or an identity token
    file, then the netrc file ($NETRC, else ~/.netrc) for the W&B host: WANDB_BASE_URL, else the base_url
    that `wandb login --host` wrote to wandb's settings file, else api.wandb.ai. So self-hosted servers
    and a $NETRC elsewhere count as online. It is done here rather than with `wandb.login(prompt=False)`
    because that argument exists only in recent wandb (pyproject allows older) and logging in prints."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return "online"
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or _wandb_settings_base_url() or "https://api.wandb.ai").netloc
    path = Path(os.environ["NETRC"]).expanduser() if os.environ.get("NETRC") else Path.home() / ".netrc"
    try:
        found = netrc.netrc(str(path)).authenticators(host) if host else None
    except (OSError, netrc.NetrcParseError):  # no file, unreadable, or malformed: no credentials from it
        found = None
    return "online" if found and found[2] else "offline"


def _wandb_settings_base_url() -> str | None:
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb")
    parser = configparser.ConfigParser()
    try:
        parser.read(config_dir / "settings")
    except configparser.Error:
        return None
    return parser.get("default", "base_url", fallback=None)


# metrics.jsonl row key -> W&B key, per row kind. Step rows are interval means over run.log_every steps, epoch
# rows whole-epoch values: the two train losses are different quantities, so they get different keys.
WANDB_KEYS = {
    "step": {"step": "train/global_step", "epoch": "train/epoch", "loss": "train/loss", "train_acc": "train/acc",
             "lr": "train/lr", "images_per_s": "perf/images_per_s",
             "images_per_s_per_device": "perf/images_per_s_per_device", "step_ms": "perf/step_ms",
             "data_ms": "perf/data_ms", "peak_mem_mb": "perf/peak_mem_mb", "time_s": "perf/time_s"},
    "epoch": {"step": "train/global_step", "epoch": "train/epoch", "train_loss": "train/epoch_loss",
              "train_acc": "train/epoch_acc", "lr": "train/lr", "val_acc": "val/acc", "val_loss": "val/loss",
              "test_acc": "test/acc", "test_loss": "test/loss", "epoch_s": "perf/epoch_s",
              "images_per_s": "perf/epoch_images_per_s", "train_s": "perf/train_s"},
}
# W&B summary aggregates: validation picks the model (its best is what a sweep compares); test is reported
# as it is at the end, never maximised over epochs (that would select on the test set). Throughput's summary
# is summary.json's train_images_per_s (the median epoch after the first, which holds compilation), not an
# aggregate of the step rows.
WANDB_SUMMARIES = {"val/acc": "max,last", "val/loss": "min,last", "train/loss": "min,last",
                   "train/epoch_loss": "min,last", "train/epoch_acc": "max,last", "test/acc": "last",
                   "test/loss": "last"}


def wandb_key(kind: str, key: str) -> str:
    """The W&B name of a metrics.jsonl key: train/, val/, test/ or perf/ (a key added to the rows later
    lands in perf/ when it is a time, rate or size, else in train/)."""
    known = WANDB_KEYS.get(kind, {}).get(key)
    if known:
        return known
    for split in ("val", "test"):
        if key.startswith(split + "_"):
            return f"{split}/{key[len(split) + 1:]}"
    if key.endswith(("_s", "_ms", "_mb", "_per_s", "_per_device")):
        return f"perf/{key}"
    return f"train/{key.removeprefix('train_')}"


class Tracker:
    """Rank-0 I/O: metrics.jsonl and the W&B run (through accelerate's tracker).

    One run directory is one W&B run: its id is kept in `run_dir/wandb_id`, and a resumed run
    (train.resume) continues it with resume="allow", so a requeued Slurm job extends the same history.
    Every W&B row carries train/global_step, the x axis of every chart (define_metric): W&B's own step
    could not go back to a checkpoint's step after a resume, the optimiser step can."""

    def __init__(self, run_dir: Path, accelerator, cfg):
        self.acc = accelerator
        self.main = accelerator.is_main_process
        self.path = run_dir / "metrics.jsonl"
        self.use_wandb = cfg.run.wandb
        self.run = None
        if self.use_wandb and self.main:
            from harness.config import to_dict

            os.environ.setdefault("WANDB_MODE", wandb_mode())
            accelerator.init_trackers(cfg.run.wandb_project, config=to_dict(cfg), init_kwargs={"wandb": {
                "dir": str(run_dir), "name": cfg.run.name or run_dir.name, "group": cfg.run.wandb_group or None,
                "id": wandb_run_id(run_dir, resuming=bool(cfg.train.resume)), "resume": "allow"}})
            self.run = accelerator.get_tracker("wandb", unwrap=True)
            self.run.define_metric("train/global_step")
            self.run.define_metric("*", step_metric="train/global_step", step_sync=True)
            for key, how in WANDB_SUMMARIES.items():
                self.run.define_metric(key, step_metric="train/global_step", summary=how)
        self._file = open(self.path, "a") if self.main else None

    def log(self, row: dict) -> None:
        if not self.main:
            return
        self._file.write(json.dumps(row, default=float) + "\n")
        self._file.flush()
        if self.run is not None:
            kind = row.get("kind", "step")
            self.acc.log({wandb_key(kind, k): v for k, v in row.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool)})

    def summary(self, summary: dict) -> None:
        """The run's final numbers, everything summary.json holds, into the W&B run summary under the same
        names (best_val_acc, time_to_target_s, train_images_per_s, ...)."""
        if self.run is not None:
            self.run.summary.update(summary)

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None


def wandb_run_id(run_dir: Path, resuming: bool) -> str:
    """The W&B run id of this run directory: the stored one when the run resumes, else a new one (stored).
    A fresh start in a directory without checkpoints is a new W&B run, not a rewrite of the old history."""
    path = run_dir / "wandb_id"
    if resuming and path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    # W&B's own form of id (8 of [a-z0-9]), made here: wandb's generator is internal and moved between releases
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    path.write_text(run_id + "\n")
    return run_id
