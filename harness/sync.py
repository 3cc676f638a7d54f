"""Upload a run's offline W&B history as one W&B run: `python -m harness.sync RUN_DIR [dry_run=true]`.

An offline run (the default without W&B credentials, and the usual case on cluster compute nodes) writes one
`RUN_DIR/wandb/offline-run-<time>-<id>` folder per start: the first start, every resume, every requeued
job, all under the run's id (`RUN_DIR/wandb_id`). W&B cannot resume a run offline, so each folder holds
only its own start; their rows are logged at the run's optimiser step, and each start's steps follow the
last one's (harness/run/tracker.py), so together they are one history. This command runs, from a machine
with network and W&B credentials,

    wandb sync --id <id> <every offline-run-*-<id> folder, oldest first>

which is how the pinned wandb (0.31, `wandb sync --help`) joins files of one run: "synced in order of
start time" into the run `--id` names. wandb marks each folder it has uploaded (`.wandb.synced`) and skips it
next time, so run this after every requeue or once at the end: the history grows, nothing is uploaded twice.
`wandb` is the executable on PATH, else the one beside this Python (a venv not activated).
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.cli import parse_args, run_cli
from harness.errors import UserError


@dataclass
class SyncOptions:
    run: str = ""  # the run directory whose offline W&B starts are uploaded (required; the bare word on the command line)
    dry_run: bool = False  # print the wandb command; upload nothing


USAGE = "python -m harness.sync RUN_DIR [dry_run=true]"


def sync_command(run_dir: Path, wandb: str = "wandb") -> list[str]:
    """The `wandb sync` command that uploads `run_dir`'s offline starts into its one W&B run, oldest first
    (the folder names begin with the start time, YYYYMMDD_HHMMSS)."""
    id_file = run_dir / "wandb_id"
    if not id_file.is_file():
        raise UserError(f"{run_dir} has no W&B run (no wandb_id): it ran with run.wandb=false, or it is not a "
                        f"run directory; usage: {USAGE}")
    run_id = id_file.read_text().strip()
    starts = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"), key=lambda p: (p.name, p.stat().st_mtime))
    if not starts:
        raise UserError(f"{run_dir}/wandb holds no offline start of W&B run {run_id}: it ran online (W&B has it "
                        f"already), or its wandb/ folder was moved")
    return [wandb, "sync", "--id", run_id, *map(str, starts)]


def wandb_executable() -> str:
    found = shutil.which("wandb") or str(Path(sys.executable).parent / "wandb")
    if not Path(found).is_file():
        raise UserError("no `wandb` command here: install wandb (pip install wandb) where you sync")
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(SyncOptions, argv, prog="python -m harness.sync", usage=USAGE, positional="run")
    if not args.run:
        raise UserError(f"name one run directory; usage: {USAGE}")
    cmd = sync_command(Path(args.run), "wandb" if args.dry_run else wandb_executable())
    print(shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    code = subprocess.run(cmd).returncode
    if code:
        raise SystemExit(code)  # wandb said why (no credentials, no network) on its own stderr
    return 0


if __name__ == "__main__":
    run_cli(main)
