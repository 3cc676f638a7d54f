"""Tracking: metrics.jsonl, grad_norms.jsonl and the W&B run, written by rank 0 from one place.

One run directory is one W&B run (its id in `run.dir/wandb_id`), however many times it starts. W&B runs
offline unless credentials are configured (`wandb_mode`), so nothing ever waits on a login prompt or the
network. What the rows hold and their W&B names are the metrics schema's (harness/run/metrics.py).

One history across starts. Every start writes a "segment" row into metrics.jsonl (the step it starts from,
the checkpoint it resumed, its W&B id), and every W&B row is logged at the run's optimiser step (wandb's
`step=`), so a resumed start's history continues where the last one's ended, online and offline alike.
A resumed start repeats the steps after its checkpoint that a killed start had already logged: metrics.jsonl
gets them again after the segment row (nothing is rewritten), W&B keeps the rows it already has and gets the
new start's from the first step after them (W&B's history only grows). Online, the run continues with
resume="allow"; offline (W&B cannot resume offline runs), each start writes its own offline-run-* folder
under the same id, and `python -m harness.sync RUN_DIR` uploads them into one run, in start order.

Whether wandb imports at all is decided here once (`wandb_importable`), for train, bench and campaign: where
it does not (an image without it, a broken install), tracking is off with one warning line.
"""
from __future__ import annotations

import configparser
import datetime as dt
import functools
import json
import netrc
import os
import secrets
import string
import sys
from pathlib import Path
from urllib.parse import urlsplit

from harness.errors import launcher_rank
from harness.run.metrics import WANDB_SUMMARIES, read_rows, segment_row, to_wandb, wandb_floor


# ----------------------------------------------------------------------------------------------------
# tracking


@functools.lru_cache(maxsize=None)
def wandb_importable() -> bool:
    """Whether wandb can be imported here. When it cannot, says so once per process (rank 0): tracking is
    off, why, and how to turn it on or silence it. Train, bench and campaign ask this before tracking."""
    try:
        import wandb  # noqa: F401
    except Exception as e:  # not installed, or an install that fails on import (a protobuf mismatch)
        if launcher_rank() == 0:
            print(f"warning: W&B tracking is off: wandb cannot be imported ({type(e).__name__}: {e}); install it "
                  f"(pip install wandb) to track, or pass run.wandb=false to silence this", file=sys.stderr, flush=True)
        return False
    return True


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
    """Rank-0 I/O: metrics.jsonl and the W&B run (through accelerate's tracker), for a start of the run at
    optimiser step `start_step` (from the checkpoint `resumed_from`, or None).

    One run directory is one W&B run: its id is kept in `run_dir/wandb_id`, and a resumed start continues it
    (the module docstring). Every W&B row is logged at its optimiser step and carries it as
    train/global_step, the x axis of every chart (define_metric)."""

    def __init__(self, run_dir: Path, accelerator, cfg, start_step: int = 0, resumed_from: Path | None = None):
        self.acc = accelerator
        self.main = accelerator.is_main_process
        self.path = run_dir / "metrics.jsonl"
        self.run, self._file, self.floor = None, None, -1
        if not self.main:
            return
        earlier = read_rows(self.path)
        run_id = None
        if cfg.run.wandb:
            from harness.config import to_dict

            run_id = wandb_run_id(run_dir, resuming=resumed_from is not None)
            self.floor = wandb_floor(earlier, run_id)  # W&B already has the rows up to this step
            os.environ.setdefault("WANDB_MODE", wandb_mode())
            accelerator.init_trackers(cfg.run.wandb_project, config=to_dict(cfg), init_kwargs={"wandb": {
                "dir": str(run_dir), "name": cfg.run.name or run_dir.name, "group": cfg.run.wandb_group or None,
                "id": run_id, "resume": "allow"}})
            self.run = accelerator.get_tracker("wandb", unwrap=True)
            self.run.define_metric("train/global_step")
            self.run.define_metric("*", step_metric="train/global_step", step_sync=True)
            for key, how in WANDB_SUMMARIES.items():
                self.run.define_metric(key, step_metric="train/global_step", summary=how)
        self._file = open(self.path, "a")
        if self.path.stat().st_size and last_byte(self.path) != b"\n":
            self._file.write("\n")  # a line cut short by a kill ends here; read_rows skips it
        self.log(segment_row(earlier, start_step, resumed_from, run_id,
                             dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")))

    def log(self, row: dict) -> None:
        """A metrics.jsonl row; its numbers also into W&B at the row's step, once W&B does not have it."""
        if not self.main:
            return
        self._file.write(json.dumps(row, default=float) + "\n")
        self._file.flush()
        if self.run is not None and row["kind"] != "segment" and row["step"] > self.floor:
            self.acc.log(to_wandb(row), step=row["step"])

    def log_grad_norms(self, row: dict | None) -> None:
        """A grad_norms.jsonl row (harness.training.gradflow; None: nothing measured). A resumed start
        appends the steps it trains again after the earlier start's rows: the later row of a step is the
        run as it stands, as in metrics.jsonl."""
        if self.main and row is not None:
            with open(self.path.parent / "grad_norms.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

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
            offline = self.run.settings.mode == "offline"
            self.run.finish(exit_code=exit_code)
            self.run = None
            if offline:  # wandb's own hint syncs one start's folder; the run's history is every start's
                print(f"W&B is offline: `python -m harness.sync {self.path.parent}` uploads every start of this "
                      f"run into one W&B run (again after each resume)", file=sys.stderr, flush=True)


def last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


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
