"""`python -m harness.sweep SWEEP.yaml [key=value ...]`: the sweep's own options are the keys of
`SweepOptions`; every other key=value is a training override added to every run."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from harness import config as C
from harness.cli import parse_known_args
from harness.errors import UserError
from harness.sweep.local import local_accelerate, run_local, visible_gpus
from harness.sweep.slurm import submit_slurm
from harness.sweep.spec import expand, load_sweep, points, train_command
from harness.sweep.wandb_launcher import write_wandb

USAGE = "python -m harness.sweep SWEEP.yaml [dry_run=true] [launcher=local|slurm|wandb] [out=DIR] [index=I] [threads_per_process=N] [training.key=value ...]"


@dataclass
class SweepOptions:
    sweep: str = ""  # the sweep file, e.g. configs/sweeps/smoke.yaml (required; the bare word on the command line)
    launcher: str = C.choices("", "local", "slurm", "wandb", default="")  # "": the sweep file's `launcher` (default local)
    dry_run: bool = False  # print one command per run; run nothing
    out: str = ""  # sweep directory ("": the sweep's `out`, else runs/sweeps/<name>)
    index: int = -1  # only run number INDEX (0-based, as dry_run lists them); -1: every run
    threads_per_process: int = -1  # CPU threads of every process of every run; -1: the sweep file's (harness/sweep/__init__.py)


def main(argv: list[str] | None = None) -> None:
    opts, overrides = parse_known_args(SweepOptions, argv, prog="python -m harness.sweep", usage=USAGE,
                                       positional="sweep")
    if not opts.sweep:
        raise C.ConfigError(f"name a sweep file; usage: {USAGE} (the sweeps are in configs/sweeps/; overrides "
                            f"are key=value)")
    sweep = load_sweep(opts.sweep, opts.out or None)
    sweep.launcher = launcher = opts.launcher or sweep.launcher  # threads per process depend on it
    if opts.threads_per_process != -1:
        sweep.threads_per_process = opts.threads_per_process
    every = expand(sweep, overrides)
    keys = points(sweep)[0]
    runs = every
    if opts.index >= 0:
        if opts.index >= len(every) or launcher == "wandb":
            raise UserError(f"index={opts.index}: sweep {sweep.name} has runs 0..{len(every) - 1} "
                            f"(and index is for the local and slurm launchers)")
        runs = [every[opts.index]]

    gpus: list[str] = []
    if launcher == "local":
        gpus = visible_gpus()
        commands = {r.index: train_command(r, local_accelerate(), gpu=bool(gpus)) for r in runs}
    else:
        commands = {r.index: train_command(r, "accelerate", gpu=True) for r in runs}
    if opts.dry_run:
        for r in runs:
            print(shlex.join(commands[r.index]))
    if launcher == "slurm":
        return submit_slurm(sweep, every, runs, opts.dry_run)
    if launcher == "wandb":
        return write_wandb(sweep, runs, keys, opts.dry_run)
    if opts.dry_run:
        return

    done = sum(r.done for r in runs)
    print(f"sweep {sweep.name}: {len(runs)} runs ({done} already done) in {sweep.out}, "
          f"{'GPUs ' + ','.join(gpus) if gpus else 'CPU, one run at a time'}", flush=True)
    failures = run_local(runs, commands, gpus, sweep.name)
    Path(sweep.out).mkdir(parents=True, exist_ok=True)
    (Path(sweep.out) / "failures.txt").write_text("".join(f"{r.name}\t{why}\t{r.dir / 'launch.log'}\n"
                                                          for r, why in failures))
    if failures:
        print(f"sweep {sweep.name}: {len(failures)} of {len(runs)} runs failed:")
        for r, why in failures:
            print(f"  {r.name}: {why} (log {r.dir / 'launch.log'})")
        raise SystemExit(1)
    print(f"sweep {sweep.name}: all {len(runs)} runs have summary.json. Report: "
          f"python -m harness.report {sweep.out} out={sweep.out}/report")
