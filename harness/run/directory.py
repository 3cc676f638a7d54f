"""The run directory for the length of a run (`RunDirectory`, a context manager): its default name, its
lock (one training per directory), the recipe check on resume, its provenance record, its checkpoints and
its tracker; leaving it tears the run down once, however the run ended.

Layout of `run.dir`:
  config.yaml         the resolved config of the run as it is now (its latest start: a resume may extend
                      train.epochs or move data.root, config.RESUMABLE); every start's config is in
                      provenance.json
  provenance.json     the first start: git SHA, library versions, devices, world size, command line, host, start
                      time, the resolved config and the data files' sizes; each later start (a resume, a
                      requeued job) the same under "restarts", with the checkpoint it resumed and the keys it
                      changed (`config_changes`, `resume_forced`)
  metrics.jsonl       one JSON object per line: kind "segment" at every start, kind "step" rows at
                      run.log_every, kind "epoch" rows (the rows' and the summary's keys: harness/run/metrics.py)
  summary.json        the final numbers (test_acc, val_acc, best_val_epoch, wall_s, train_images_per_s, ...)
  grad_norms.jsonl    with train.log_grad_norms: per-layer gradient norms at run.log_every
  checkpoints/        step-NNNNNNNNN/ (accelerate save_state folders) and `latest`, a one-line pointer
  model.safetensors   the last epoch's weights (ema.safetensors with EMA)
  best.safetensors    with a validation split: the best validation epoch's weights (best_ema.safetensors
                      with EMA)
  wandb/, wandb_id    the W&B run (offline unless W&B credentials are configured; one offline-run-* folder
                      per start, joined by `python -m harness.sync RUN_DIR`) and its id
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from pathlib import Path

import yaml

from harness import config as C
from harness.errors import UserError, agreed
from harness.models.weights import run_weights_file
from harness.provenance import provenance
from harness.run.checkpoints import (CONFIG, Checkpoints, checkpoint_step, fsync_dir, resolve_resume,
                                     write_durable)
from harness.run.tracker import Tracker
from harness.tables import write_json


def default_run_dir(model: str) -> str:
    return str(Path("runs") / f"{model}-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}")


def record_provenance(path: Path, current: dict) -> None:
    """The first start of a run directory is its provenance; each later start (a resume, a requeued job)
    is appended under "restarts", so the original command, config and versions are never lost."""
    if path.is_file():
        first = json.loads(path.read_text())
        first.setdefault("restarts", []).append(current)
        current = first
    write_json(path, current)


def last_start(run_dir: Path) -> dict:
    """The latest start's record in `run_dir`'s provenance.json ({} when there is none)."""
    path = run_dir / "provenance.json"
    if not path.is_file():
        return {}
    first = json.loads(path.read_text())
    return (first.get("restarts") or [first])[-1]


def data_files(data: C.DataConfig) -> dict[str, int] | None:
    """{file under data.root: size in bytes} of the data set's folders (cifar-10-* or cifar-100-*): what tells
    a moved data.root from other data without reading it (None for synthetic images)."""
    if data.backend == "synthetic":
        return None
    root = Path(data.root)
    prefix = "cifar-10-" if data.dataset == "cifar10" else "cifar-100-"
    return {str(p.relative_to(root)): p.stat().st_size for d in sorted(root.glob(prefix + "*")) if d.is_dir()
            for p in sorted(d.rglob("*")) if p.is_file()}


def check_recipe(cfg: C.Config, checkpoint: Path) -> tuple[dict[str, tuple], list[str]]:
    """What `cfg` changes against the recipe `checkpoint` was written with (its config.yaml, else its run's):
    ({key: (old, new)}, the keys among them that are a change of recipe). config.RESUMABLE keys may change
    (data.root only to a root holding the same files as the last start recorded, else as the old root); a
    change of recipe raises UserError naming every changed key, unless train.resume_force. Nothing to
    compare: ({}, [])."""
    run_dir = checkpoint.parent.parent
    written = next((p for p in (checkpoint / CONFIG, run_dir / "config.yaml") if p.is_file()), None)
    if written is None:
        return {}, []
    stored = yaml.safe_load(written.read_text())
    changes = C.recipe_changes(stored, cfg)
    recipe = [k for k in changes if k not in C.RESUMABLE]
    if "data.root" in changes:
        before = last_start(run_dir).get("data_files")
        if before is None and Path(changes["data.root"][0] or "").is_dir():
            before = data_files(C.from_dict(C.DataConfig, {**stored["data"], "root": changes["data.root"][0]}))
        if not before or data_files(cfg.data) != before:
            recipe.append("data.root")
    if recipe and not cfg.train.resume_force:
        listed = ", ".join(f"{k}: {C.value_text(changes[k][0])} -> {C.value_text(changes[k][1])}"
                           + (" (other files)" if k == "data.root" else "") for k in sorted(recipe))
        raise UserError(f"train.resume: {checkpoint} was written with another recipe: {listed}. Start a new run.dir, "
                        f"or pass train.resume_force=true to resume with these changes (recorded in provenance.json)")
    return changes, sorted(recipe)


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
    refused where checkpoints already are, train.resume resolved (`run.resume_from`: the checkpoint, or
    None), the lock taken and, on a resume, the recipe checked against the checkpoint's run (`check_recipe`:
    a refused change stops every rank before anything is loaded or written); a fresh start writes config.yaml
    and provenance.json at once. `run.start(raw_model, objects)` then loads the checkpoint, if any, and only
    once it has loaded records the resumed start (config.yaml, provenance.json), then opens `run.tracker`
    (metrics.jsonl, W&B): a resume that fails before that leaves the run's record as it was.

    Leaving the block is the run's one teardown, whichever way it is left (the end, a stop by a signal as
    SystemExit, an error): the tracker closes with the exit code (W&B records it) and the lock is released.
    It records what happened; it decides nothing (what to save, which exit code: the loop's). The process
    group outlives the block: the job ends it once (harness.train.process_group), after its last run."""

    def __init__(self, cfg: C.Config, accelerator):
        self.cfg, self.acc = cfg, accelerator
        self.lock: RunLock | None = None
        self.tracker: Tracker | None = None
        self.changes, self.forced = {}, []

    def __enter__(self) -> RunDirectory:
        from accelerate.utils import broadcast_object_list

        cfg, acc = self.cfg, self.acc
        path = [cfg.run.dir or default_run_dir(cfg.model.name)]
        broadcast_object_list(path)  # one directory for all ranks, even when rank clocks differ
        cfg.run.dir = path[0]
        self.path = Path(path[0])
        self.checkpoints = Checkpoints(self.path, acc, keep=cfg.run.keep_checkpoints, config_yaml=C.to_yaml(cfg))
        if not cfg.train.resume and self.checkpoints.latest() is not None:  # never train over another run's
            raise UserError(f"run.dir={self.path} already holds a run (checkpoint {self.checkpoints.latest()}). "
                            f"Continue it with train.resume=auto, or choose a new run.dir.")
        self.resume_from = resolve_resume(cfg.train.resume, self.checkpoints)
        # the main process takes the lock and checks the recipe; every rank stops on its error
        self.changes, self.forced = agreed(acc, self._lock_and_check if acc.is_main_process else lambda: ({}, []))
        return self

    def _lock_and_check(self) -> tuple[dict[str, tuple], list[str]]:
        self.lock = RunLock(self.path)  # held until the block is left (or the process ends)
        if self.resume_from is None:  # a fresh start changes nothing: recorded now, so a run that then fails is
            self._record(None)  # listed (harness.report: incomplete) with its config
            return {}, []
        try:
            return check_recipe(self.cfg, self.resume_from)
        except UserError:
            self.lock.release()
            raise

    def _record(self, resumed: Path | None) -> None:
        """config.yaml (this start's config) and this start's entry in provenance.json (main process)."""
        cfg, acc = self.cfg, self.acc
        write_durable(self.path / CONFIG, C.to_yaml(cfg))  # whole or as it was, after a kill
        record = provenance(acc.num_processes, acc.device)
        record.update(config=C.to_dict(cfg), data_files=data_files(cfg.data),
                      resumed_from=str(resumed) if resumed is not None else None,
                      config_changes={k: list(v) for k, v in self.changes.items()}, resume_forced=self.forced)
        record_provenance(self.path / "provenance.json", record)

    def start(self, raw_model, objects) -> Path | None:
        """Load `run.resume_from` (if any) into `raw_model`, `objects` and the optimiser (`Checkpoints.restore`);
        once it has loaded, record the resumed start (config.yaml, provenance.json); then open the tracker (a
        segment row in metrics.jsonl, the W&B run). Every rank. Returns the checkpoint loaded, or None."""
        cfg, acc = self.cfg, self.acc
        resumed = self.checkpoints.restore(self.resume_from, raw_model, objects)
        if resumed is not None and acc.is_main_process:
            self._record(resumed)
        if self.changes:
            acc.print(("train.resume_force=true: resumed with a changed recipe: " if self.forced else
                       "resumed with changed settings: ")
                      + ", ".join(f"{k}: {C.value_text(a)} -> {C.value_text(b)}" for k, (a, b) in self.changes.items())
                      + " (recorded in provenance.json)")
        self.tracker = Tracker(self.path, acc, cfg, checkpoint_step(resumed) if resumed is not None else 0, resumed)
        return resumed

    def __exit__(self, kind, error, traceback) -> None:
        code = 0 if error is None else error.code if isinstance(error, SystemExit) else getattr(error, "exit_code", 1)
        if self.tracker is not None:  # None: the run stopped before it started (`start`)
            self.tracker.close(code if isinstance(code, int) else 1)
        if self.lock is not None:
            self.lock.release()

    def save_weights(self, net, ema_net=None, which: str = "last", **meta) -> None:
        """The run's weights, plain (create_model(name) + load_state_dict, or harness.models.load_run):
        `which` "last" (model.safetensors, ema.safetensors with EMA) or "best" (best.safetensors,
        best_ema.safetensors), each written atomically (a temporary file, fsync, rename, then the directory
        fsync'd) by the main process: a kill leaves the previous file whole."""
        from harness.models import save_weights

        if self.acc.is_main_process:
            save_weights(net, self.path / run_weights_file(which), **meta)
            if ema_net is not None:
                save_weights(ema_net, self.path / run_weights_file(which, ema=True), **meta)
            fsync_dir(self.path)

    def write_summary(self, summary: dict) -> Path:
        """summary.json, and the same numbers into the W&B run summary (main process)."""
        if self.acc.is_main_process:
            write_json(self.path / "summary.json", summary)
            self.tracker.summary(summary)
        return self.path / "summary.json"
