"""The run directory: its default name, its lock (one training per directory), and its provenance record.

Layout of `run.dir`:
  config.yaml         the resolved config
  provenance.json     git SHA, library versions, devices, world size, command line, threads, host, start time
  metrics.jsonl       one JSON object per line: kind "step" rows at run.log_every, kind "epoch" rows
  summary.json        the final numbers (test_acc, val_acc, wall_s, train_images_per_s, ...)
  checkpoints/        step-NNNNNNN/ (accelerate save_state folders) and `latest`, a one-line pointer
  model.safetensors   the final weights (ema.safetensors with EMA)
  wandb/, wandb_id    the W&B run (offline unless W&B credentials are configured) and its id
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from pathlib import Path

from harness.errors import UserError
from harness.tables import write_json


def default_run_dir(model: str) -> str:
    return str(Path("runs") / f"{model}-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}")


def record_provenance(path: Path, current: dict) -> None:
    """The first start of a run directory is its provenance; each later start (a resume, a requeued job)
    is appended under "restarts", so the original command and versions are never lost."""
    if path.is_file():
        first = json.loads(path.read_text())
        first.setdefault("restarts", []).append(current)
        current = first
    write_json(path, current)


class RunLock:
    """One training process tree per run directory: the main process holds an exclusive lock on
    `<run dir>/.lock` for the whole run (released by the OS if the process dies), so a second job started
    on the same run.dir (a double submission, a requeue racing its predecessor) stops before writing."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path, self._file = run_dir / ".lock", None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            self._file = None
            raise UserError(f"run.dir={run_dir} is in use by {holder}: two trainings cannot write one run "
                            f"directory. Wait for it to end (or stop it), or choose another run.dir.") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
