"""Tracking: metrics.jsonl and the W&B run, written by rank 0 from one place.

One run directory is one W&B run (its id in `run.dir/wandb_id`). W&B runs offline unless credentials are
configured (`wandb_mode`), so nothing ever waits on a login prompt or the network. What the rows hold and
their W&B names are the metrics schema's (harness/run/metrics.py).
"""
from __future__ import annotations

import configparser
import json
import netrc
import os
import secrets
import string
from pathlib import Path
from urllib.parse import urlsplit

from harness.run.metrics import WANDB_SUMMARIES, to_wandb


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
            self.acc.log(to_wandb(row))

    def summary(self, summary: dict) -> None:
        """The run's final numbers, everything summary.json holds, into the W&B run summary under the same
        names (best_val_acc, time_to_target_s, train_images_per_s, ...)."""
        if self.run is not None:
            self.run.summary.update(summary)

    def close(self, exit_code: int = 0) -> None:
        """Close metrics.jsonl and finish the W&B run with the process's exit code (non-zero: W&B marks the
        run failed; a run stopped by a signal is resumed into the same W&B run)."""
        if self._file:
            self._file.close()
            self._file = None
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


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
