"""The run directory for the length of a run (`RunDirectory`, a context manager): its default name, its
lock (one training per directory), its provenance record, its checkpoints and its tracker; leaving it tears
the run down once, however the run ended.

Layout of `run.dir`:
  config.yaml         the resolved config
  provenance.json     git SHA, library versions, devices, world size, command line, threads, host, start time
  metrics.jsonl       one JSON object per line: kind "step" rows at run.log_every, kind "epoch" rows
  summary.json        the final numbers (test_acc, val_acc, wall_s, train_images_per_s, ...)
                      (the rows' and the summary's keys: harness/run/metrics.py)
  grad_norms.jsonl    with train.log_grad_norms: per-layer gradient norms at run.log_every
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

from harness import config as C
from harness.errors import UserError
from harness.provenance import provenance
from harness.run.checkpoints import Checkpoints
from harness.run.tracker import Tracker
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


class RunDirectory:
    """`with RunDirectory(cfg, accelerator) as run:` opens `cfg.run.dir` on every rank: one path for all
    ranks (rank 0's name, even when the ranks' clocks differ; written back into cfg.run.dir), a fresh run
    refused where checkpoints already are, the lock taken (every rank stops if it is held), config.yaml and
    provenance.json written, then `run.checkpoints` and `run.tracker` (metrics.jsonl, W&B) opened.

    Leaving the block is the run's one teardown, whichever way it is left (the end, a stop by a signal as
    SystemExit, an error): the tracker closes with the exit code (W&B records it), accelerate's trackers end
    and the process group goes, the lock is released. It records what happened; it decides nothing (what to
    save, which exit code: the loop's). After an error the process group is left for the process's end, as
    another rank may still be waiting in a collective."""

    def __init__(self, cfg: C.Config, accelerator):
        self.cfg, self.acc = cfg, accelerator
        self.lock: RunLock | None = None
        self.tracker: Tracker | None = None

    def __enter__(self) -> RunDirectory:
        from accelerate.utils import broadcast_object_list

        cfg, acc = self.cfg, self.acc
        path = [cfg.run.dir or default_run_dir(cfg.model.name)]
        broadcast_object_list(path)  # one directory for all ranks, even when rank clocks differ
        cfg.run.dir = path[0]
        self.path = Path(path[0])
        self.checkpoints = Checkpoints(self.path, acc, keep=cfg.run.keep_checkpoints)
        if not cfg.train.resume and self.checkpoints.latest() is not None:  # never train over another run's
            raise UserError(f"run.dir={self.path} already holds a run (checkpoint {self.checkpoints.latest()}). "
                            f"Continue it with train.resume=auto, or choose a new run.dir.")
        error = [None]
        if acc.is_main_process:
            try:
                self.lock = RunLock(self.path)  # held until the block is left (or the process ends)
            except UserError as e:
                error = [str(e)]
        broadcast_object_list(error)  # every rank stops, not only the one that found the lock taken
        if error[0]:
            raise UserError(error[0])
        if acc.is_main_process:
            (self.path / "config.yaml").write_text(C.to_yaml(cfg))
            record_provenance(self.path / "provenance.json", provenance(acc.num_processes, acc.device))
        self.tracker = Tracker(self.path, acc, cfg)
        return self

    def __exit__(self, kind, error, traceback) -> None:
        code = 0 if error is None else error.code if isinstance(error, SystemExit) else getattr(error, "exit_code", 1)
        self.tracker.close(code if isinstance(code, int) else 1)
        if error is None or isinstance(error, SystemExit):
            self.acc.end_training()
        if self.lock is not None:
            self.lock.release()

    def save_weights(self, net, ema_net=None, **meta) -> None:
        """The run's weights, plain (create_model(name) + load_state_dict, or harness.models.load_run):
        model.safetensors, and ema.safetensors with EMA. Written by the main process."""
        from harness.models import save_weights

        if self.acc.is_main_process:
            save_weights(net, self.path / "model.safetensors", **meta)
            if ema_net is not None:
                save_weights(ema_net, self.path / "ema.safetensors", **meta)

    def write_summary(self, summary: dict) -> Path:
        """summary.json, and the same numbers into the W&B run summary (main process)."""
        if self.acc.is_main_process:
            write_json(self.path / "summary.json", summary)
            self.tracker.summary(summary)
        return self.path / "summary.json"
