"""The Slurm launcher: <out>/commands.txt (line i = run i) and one `sbatch --array=...` of
launch/slurm/sweep.sbatch per GPU count (array tasks share one resource request)."""
from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from harness.errors import UserError
from harness.provenance import REPO
from harness.sweep.spec import Run, Sweep, repo_path, train_command

def array_spec(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    parts, start = [], None
    for i, n in enumerate(indices):
        if start is None:
            start = n
        if i + 1 == len(indices) or indices[i + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ",".join(parts)


def sbatch_commands(sweep: Sweep, runs: list[Run], commands_file: Path) -> list[list[str]]:
    """One job array per GPU count, holding the indices of the unfinished runs (array tasks share one
    resource request, so a 1-GPU run never sits on an 8-GPU allocation)."""
    by_gpus: dict[int, list[int]] = {}
    for r in runs:
        if not r.done:
            by_gpus.setdefault(r.gpus, []).append(r.index)
    out = Path(repo_path(sweep.out))
    throttle = f"%{sweep.slurm.max_parallel}" if sweep.slurm.max_parallel else ""
    return [["sbatch", f"--array={array_spec(idx)}{throttle}", f"--job-name={sweep.name}",
             f"--gpus-per-node={gpus}", f"--chdir={REPO}", f"--output={out}/slurm-%A_%a.out",
             *sweep.slurm.sbatch_args, "launch/slurm/sweep.sbatch", repo_path(commands_file)]
            for gpus, idx in sorted(by_gpus.items())]


def submit_slurm(sweep: Sweep, runs: list[Run], selected: list[Run], dry_run: bool) -> None:
    stale = [f"{r.name}: {r.mismatch()}" for r in selected if r.mismatch()]
    if stale:
        raise UserError("run directories of another config are in the way:\n  " + "\n  ".join(stale))
    commands_file = Path(sweep.out) / "commands.txt"
    # every run of the sweep has its line (line i+1 = array index i), also when only some are submitted
    lines = [shlex.join(train_command(r, "accelerate", gpu=True)) for r in runs]
    jobs = sbatch_commands(sweep, selected, commands_file)
    if dry_run:
        for job in jobs:
            print(shlex.join(job))
        return
    commands_file.parent.mkdir(parents=True, exist_ok=True)
    commands_file.write_text("\n".join(lines) + "\n")
    if not jobs:
        print(f"all {len(selected)} selected runs of {sweep.name} have summary.json: nothing to submit")
        return
    if shutil.which("sbatch") is None:
        raise UserError(f"sbatch is not on PATH: the slurm launcher submits from a Slurm login node. The run "
                        f"commands are in {commands_file}; dry_run=true prints the sbatch command(s).")
    for job in jobs:
        proc = subprocess.run(job, cwd=REPO, capture_output=True, text=True)
        if proc.returncode:
            raise UserError(f"{shlex.join(job)} failed ({proc.returncode}): {proc.stderr.strip()}")
        print(f"{shlex.join(job)}\n  {proc.stdout.strip()}")
