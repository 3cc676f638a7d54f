"""Sweeps: many training runs from one YAML, run here, as a Slurm job array, or by W&B agents.

    python -m harness.sweep configs/sweeps/X.yaml [--dry-run] [--launcher local|slurm|wandb]
                            [--out DIR] [--index I] [key=value ...]

A sweep file loads into `Sweep` below and is checked like any config (unknown keys name themselves):

    name: architectures             # default: the file's stem; also the W&B group of every run
    config: configs/resnet18.yaml   # base training recipe (optional; the dataclass defaults otherwise)
    out: runs/sweeps/architectures  # default runs/sweeps/<name>; each run lives in <out>/<run name>
    overrides: {train.epochs: 20}   # fixed for every run; key=value on the command line adds to these
    grid:                           # cartesian product of the lists ...
      model.name: [resnet18, vgg11]
      train.batch_size: [128, 256]
    random:                         # ... or N seeded samples: a list is a choice, {min, max, log} a range
      samples: 8
      seed: 0
      space: {optim.lr: {min: 0.01, max: 0.4, log: true}, model.name: [resnet18, vgg11]}

Three keys are not training-config keys; they may stand in `overrides`, `grid` or `space`:
  gpus (alias launch.num_processes)  processes per run: 1 runs `python -m harness.train`, k > 1 runs
                                     `accelerate launch --num_processes k harness/train.py`
  batch_per_gpu                      train.batch_size = batch_per_gpu x gpus (a scaling sweep keeps the
                                     per-GPU batch while train.batch_size stays global)
  config                             the base recipe of that run (e.g. one configs/zoo/<model>.yaml each)

Every run is validated when the sweep expands, by building its training `Config` exactly as the run
will: a bad key, a wrong type, an unknown model or a batch that does not split over its GPUs stops the
sweep before anything starts, naming the run. Every run gets `run.dir=<out>/<run name>` (the name is
made from its varied values, e.g. `resnet18-bs256-2gpu`), `run.wandb_group=<sweep name>` and
`train.resume=auto`: runs that have summary.json are skipped, unfinished ones continue from their last
checkpoint, so a stopped sweep is resumed by running the same command again.

Launchers:
  local  one run per free GPU (CUDA_VISIBLE_DEVICES per run; a run needing k GPUs waits, in order, for
         k free); on a machine without GPUs one run at a time. Failed runs are listed at the end and the
         exit status is 1; the other runs still run.
  slurm  writes <out>/commands.txt (line i = run i) and submits launch/slurm/sweep.sbatch as job
         arrays, one `sbatch --array=...` per GPU count (array tasks share one resource request).
  wandb  writes <out>/wandb_sweep.yaml for `wandb sweep` and prints how to start agents.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness import config as C
from harness.errors import UserError
from harness.run import REPO

# sweep keys that pick how a run is launched rather than what it trains
LAUNCH_KEYS = {"gpus": "gpus", "launch.num_processes": "gpus", "batch_per_gpu": "batch_per_gpu", "config": "config"}
# short forms of config leaves in run names: resnet18-bs256-lr0.1 reads better than batch_size256
ABBREV = {"batch_size": "bs", "batch_per_gpu": "bpg", "weight_decay": "wd", "epochs": "ep", "precision": "",
          "label_smoothing": "ls", "warmup_epochs": "warm", "limit_train": "n", "seed": "seed"}


@dataclass
class RandomSearch:
    samples: int = 0
    seed: int = 0
    space: dict[str, Any] = field(default_factory=dict)  # key -> [choices] or {min, max, log}


@dataclass
class SlurmOptions:
    sbatch_args: list[str] = field(default_factory=list)  # e.g. ["--partition=gpu", "--time=08:00:00"]
    max_parallel: int = 0  # array throttle (sbatch --array=...%N); 0: as many as the cluster gives


@dataclass
class Sweep:
    name: str = ""
    config: str = ""
    out: str = ""
    launcher: str = C.choices("local", "slurm", "wandb", default="local")
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, Any] = field(default_factory=dict)
    random: RandomSearch = field(default_factory=RandomSearch)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)


@dataclass
class Run:
    index: int
    name: str
    dir: Path
    gpus: int
    config: str  # base recipe, "" for none
    overrides: list[str]  # training overrides, run.dir last
    point: dict  # the varied values of this run
    project: str  # run.wandb_project, for the W&B launcher's instructions
    resolved: dict = field(default_factory=dict)  # the training config this run resolves to

    @property
    def done(self) -> bool:
        return (self.dir / "summary.json").is_file()

    def mismatch(self) -> str | None:
        """If the run directory already holds a run of another config (the sweep file was edited but the
        run's name did not change), the keys that differ: skipping or resuming it would be wrong."""
        saved = self.dir / "config.yaml"
        if not saved.is_file():
            return None
        old, new = flatten(yaml.safe_load(saved.read_text()) or {}), flatten(self.resolved)
        keys = [k for k in sorted(set(old) | set(new)) if k != "train.resume" and old.get(k) != new.get(k)]
        if not keys:
            return None
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4]) + (", ..." if keys[4:] else "")
        return (f"{saved} was written for another config ({changes}); move that run directory away or give "
                f"the sweep another --out")


# ----------------------------------------------------------------------------------------------------
# loading and expansion


def load_sweep(path: str | Path, out: str | None = None) -> Sweep:
    sweep = C.load(Sweep, path)
    sweep.name = sweep.name or Path(path).stem
    sweep.out = out or sweep.out or f"runs/sweeps/{sweep.name}"
    return sweep


def flatten(data: dict, prefix: str = "") -> dict:
    """{train: {epochs: 1}} -> {"train.epochs": 1}: fixed overrides may be written either way."""
    flat = {}
    for key, value in data.items():
        key = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def _sample(rng: random.Random, key: str, spec) -> Any:
    if isinstance(spec, list) and spec:
        return rng.choice(spec)
    if isinstance(spec, dict) and {"min", "max"} <= set(spec) <= {"min", "max", "log"}:
        lo, hi, log = spec["min"], spec["max"], bool(spec.get("log", False))
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo < hi and (lo > 0 or not log)):
            raise C.ConfigError(f"random.space.{key}: need numbers min < max (and min > 0 with log: true)")
        if isinstance(lo, int) and isinstance(hi, int) and not log:
            return rng.randint(lo, hi)
        value = math.exp(rng.uniform(math.log(lo), math.log(hi))) if log else rng.uniform(lo, hi)
        value = float(f"{value:.4g}")  # 4 significant digits: readable run names, no false precision
        return round(value) if isinstance(lo, int) and isinstance(hi, int) else value
    raise C.ConfigError(f"random.space.{key}: expected a non-empty list of choices or a range "
                        f"{{min: A, max: B, log: true|false}}, got {spec!r}")


def points(sweep: Sweep) -> tuple[list[str], list[dict]]:
    """The varied keys and one dict of values per run (grid: cartesian product; random: seeded samples)."""
    rnd = sweep.random
    if sweep.grid and (rnd.space or rnd.samples):
        raise C.ConfigError(f"sweep {sweep.name}: give either grid or random, not both")
    if sweep.grid:
        for key, values in sweep.grid.items():
            if not isinstance(values, list) or not values:
                raise C.ConfigError(f"grid.{key}: expected a non-empty list of values, got {values!r}")
        keys = list(sweep.grid)
        return keys, [dict(zip(keys, combo)) for combo in itertools.product(*sweep.grid.values())]
    if rnd.space:
        if rnd.samples < 1:
            raise C.ConfigError("random.samples: how many runs to draw (at least 1)")
        rng = random.Random(rnd.seed)
        return list(rnd.space), [{k: _sample(rng, k, spec) for k, spec in rnd.space.items()}
                                 for _ in range(rnd.samples)]
    return [], [{}]


def _text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "_".join(map(_text, value))
    return str(value)


def run_name(keys: list[str], point: dict) -> str:
    """A readable name from the varied values: model names and recipe stems as they are, gpus as `2gpu`,
    other keys as short-leaf + value (`bs256`, `lr0.1`)."""
    parts = []
    for key in keys:
        value = point[key]
        leaf = key.rsplit(".", 1)[-1]
        if key == "model.name":
            parts.append(_text(value))
        elif key == "config":
            parts.append(Path(str(value)).stem)
        elif LAUNCH_KEYS.get(key) == "gpus":
            parts.append(f"{_text(value)}gpu")
        else:
            parts.append(ABBREV.get(leaf, leaf) + _text(value))
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", "-".join(parts)) or "run"


def override_text(key: str, value) -> str:
    """key=value that `parse_override` reads back as `value` (strings that YAML would turn into
    something else, and lists, are written as JSON, which YAML reads)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, str) and C.parse_override(f"k={value}")[1] == value:
        text = value
    else:
        text = json.dumps(value)
    return f"{key}={text}"


def repo_path(path: str | Path) -> str:
    """Commands run from the repository root (local and Slurm alike): paths inside it are written
    relative to it, so they also hold in a container that mounts the checkout elsewhere."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


def expand(sweep: Sweep, cli_overrides: list[str] | None = None) -> list[Run]:
    """Every run of the sweep, each validated by building its training Config."""
    from harness.models import list_models
    from harness.train import check_config  # the trainer's own checks (batch divisible by processes, ...)

    fixed = flatten(sweep.overrides)
    for text in cli_overrides or []:
        key, value = C.parse_override(text)
        fixed[key] = value
    keys, pts = points(sweep)
    for text in cli_overrides or []:
        key = C.parse_override(text)[0]
        if key in keys:
            raise C.ConfigError(f"{key} is varied by sweep {sweep.name}; a command-line override would make "
                                f"every run the same. Edit the sweep's grid/random instead.")
    names = [run_name(keys, p) for p in pts]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):  # random search can draw the same point twice
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name}-{seen[name]}"
    out = Path(sweep.out)
    models = set(list_models())
    runs = []
    for index, (name, point) in enumerate(zip(names, pts)):
        values = {**fixed, **point}
        launch = {LAUNCH_KEYS[k]: values.pop(k) for k in list(values) if k in LAUNCH_KEYS}
        where = f"sweep {sweep.name}, run {name}"
        gpus = launch.get("gpus", 1)
        if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
            raise C.ConfigError(f"{where}: gpus={gpus!r}: processes per run, a whole number >= 1")
        if "batch_per_gpu" in launch:
            if "train.batch_size" in values:
                raise C.ConfigError(f"{where}: set batch_per_gpu or train.batch_size, not both")
            values["train.batch_size"] = launch["batch_per_gpu"] * gpus
        base = str(launch.get("config", sweep.config) or "")
        run_dir = out / name
        overrides = ([f"run.wandb_group={sweep.name}", "train.resume=auto"]
                     + [override_text(k, v) for k, v in values.items()] + [f"run.dir={repo_path(run_dir)}"])
        try:
            cfg = C.load(C.Config, base or None, overrides)
            check_config(cfg, gpus)
            if cfg.model.name not in models:
                raise C.ConfigError(f"model.name={cfg.model.name}: not a zoo model (python -m harness.models)")
        except C.ConfigError as e:
            raise C.ConfigError(f"{where}: {e}") from None
        runs.append(Run(index, name, run_dir, gpus, repo_path(base) if base else "", overrides, point,
                        cfg.run.wandb_project, C.to_dict(cfg)))
    return runs


# ----------------------------------------------------------------------------------------------------
# commands


def train_command(run: Run, python: str, accelerate: str, gpu: bool) -> list[str]:
    """One process: `python -m harness.train`. k processes: `accelerate launch` on this node with a free
    port (--main_process_port 0), so concurrent runs on one machine do not collide."""
    recipe = ["--config", run.config] if run.config else []
    if run.gpus == 1:
        return [python, "-m", "harness.train", *recipe, *run.overrides]
    topology = "launch/accelerate/node_8gpu.yaml" if gpu else "launch/accelerate/cpu_ddp.yaml"
    return [accelerate, "launch", "--config_file", topology, "--num_processes", str(run.gpus),
            "--main_process_port", "0", "harness/train.py", *recipe, *run.overrides]


def visible_gpus() -> list[str]:
    """GPU ids this process may hand out: CUDA_VISIBLE_DEVICES if set, else all that torch sees."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def local_executables() -> tuple[str, str]:
    """This interpreter and the accelerate script installed beside it (a venv need not be activated)."""
    beside = Path(sys.executable).parent / "accelerate"
    return sys.executable, str(beside) if beside.is_file() else "accelerate"


# ----------------------------------------------------------------------------------------------------
# local launcher


def run_local(runs: list[Run], commands: dict[int, list[str]], gpus: list[str]) -> list[tuple[Run, str]]:
    """Run every unfinished run, one per free GPU (CPU: one at a time); return (run, why) per failure."""
    stale = {r.index: r.mismatch() for r in runs}
    failures: list[tuple[Run, str]] = [(r, stale[r.index]) for r in runs if stale[r.index]]
    for r, why in failures:
        print(f"[{r.index}] FAILED {r.name}: {why}")
    for r in runs:
        if r.done and not stale[r.index]:
            print(f"[{r.index}] skip {r.name}: {r.dir / 'summary.json'} exists")
    pending = [r for r in runs if not r.done and not stale[r.index]]
    for r in [r for r in pending if gpus and r.gpus > len(gpus)]:
        failures.append((r, f"needs {r.gpus} GPUs; this machine offers {len(gpus)}"))
        pending.remove(r)
    free = list(gpus)
    running: dict[subprocess.Popen, tuple[Run, list[str], float]] = {}

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while pending or running:
            # strict order: the head of the queue waits for its k GPUs rather than being overtaken
            while pending and (len(free) >= pending[0].gpus if gpus else not running):
                run = pending.pop(0)
                ids, free = free[:run.gpus], free[run.gpus:]
                env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ",".join(ids)} if gpus else {}))
                run.dir.mkdir(parents=True, exist_ok=True)
                log = open(run.dir / "launch.log", "ab")
                # own session: a Ctrl-C at the terminal reaches the sweep, which asks each run to checkpoint
                proc = subprocess.Popen(commands[run.index], cwd=REPO, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                log.close()
                running[proc] = (run, ids, time.time())
                where = f"GPU {','.join(ids)}" if gpus else "CPU"
                print(f"[{run.index}] start {run.name} on {where} (log {run.dir / 'launch.log'})", flush=True)
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                run, ids, t0 = running.pop(proc)
                free += ids
                took = time.time() - t0
                if proc.returncode == 0 and run.done:
                    print(f"[{run.index}] done {run.name} in {took:.0f} s", flush=True)
                    continue
                why = (f"exit status {proc.returncode}" if proc.returncode else "exited 0 without summary.json")
                failures.append((run, why))
                tail = (run.dir / "launch.log").read_text(errors="replace").splitlines()[-12:]
                print(f"[{run.index}] FAILED {run.name} ({why}) after {took:.0f} s; last lines of "
                      f"{run.dir / 'launch.log'}:\n    " + "\n    ".join(tail), flush=True)
    except KeyboardInterrupt:
        # SIGTERM makes harness.train checkpoint and exit; the same sweep command resumes the runs
        for proc in running:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in running:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        print(f"sweep stopped; {len(running)} run(s) asked to checkpoint. Run the same command to resume.")
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    return failures


# ----------------------------------------------------------------------------------------------------
# slurm launcher


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
    lines = [shlex.join(train_command(r, "python", "accelerate", gpu=True)) for r in runs]
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
                        f"commands are in {commands_file}; --dry-run prints the sbatch command(s).")
    for job in jobs:
        proc = subprocess.run(job, cwd=REPO, capture_output=True, text=True)
        if proc.returncode:
            raise UserError(f"{shlex.join(job)} failed ({proc.returncode}): {proc.stderr.strip()}")
        print(f"{shlex.join(job)}\n  {proc.stdout.strip()}")


# ----------------------------------------------------------------------------------------------------
# W&B launcher


def wandb_definition(sweep: Sweep, runs: list[Run], keys: list[str]) -> dict:
    """A W&B sweep (method grid/random) whose command runs harness.train with `${args_no_hyphens}`, so
    each parameter arrives as key=value. W&B has no per-run macro for a path, so a small bash wrapper
    puts each run in <out>/$WANDB_RUN_ID (the agent exports WANDB_RUN_ID to the run's process)."""
    gpus = {r.gpus for r in runs}
    if len(gpus) > 1:
        raise C.ConfigError(f"sweep {sweep.name}: the wandb launcher starts every run the same way; it cannot "
                            f"vary gpus (use --launcher local or slurm)")
    gpus = gpus.pop()
    fixed = flatten(sweep.overrides)
    params: dict[str, dict] = {}
    for key, value in fixed.items():
        if key not in LAUNCH_KEYS:
            params[key] = {"value": value}
    if "batch_per_gpu" in fixed:
        params["train.batch_size"] = {"value": fixed["batch_per_gpu"] * gpus}
    for key in keys:
        # `--config` as a parameter name: ${args_no_hyphens} then passes --config=<recipe>, which
        # harness.train reads; every other varied key is a config key already
        name = {"config": "--config", "batch_per_gpu": "train.batch_size"}.get(key, key)
        if LAUNCH_KEYS.get(key) == "gpus":
            continue
        if sweep.grid:
            values = sweep.grid[key]
            if key == "config":
                values = [repo_path(v) for v in values]
            elif key == "batch_per_gpu":
                values = [v * gpus for v in values]
            params[name] = {"values": values}
        else:
            spec = sweep.random.space[key]
            if isinstance(spec, list):
                params[name] = {"values": spec}
            elif spec.get("log"):
                params[name] = {"distribution": "log_uniform_values", "min": spec["min"], "max": spec["max"]}
            elif isinstance(spec["min"], int) and isinstance(spec["max"], int):
                params[name] = {"distribution": "int_uniform", "min": spec["min"], "max": spec["max"]}
            else:
                params[name] = {"distribution": "uniform", "min": spec["min"], "max": spec["max"]}
    params["run.wandb"] = {"value": True}
    params.setdefault("run.wandb_group", {"value": sweep.name})
    recipe = f"--config {shlex.quote(sweep.config and repo_path(sweep.config))} " if sweep.config else ""
    launch = ("python -m harness.train" if gpus == 1 else
              f"accelerate launch --config_file launch/accelerate/node_8gpu.yaml --num_processes {gpus} "
              f"--main_process_port 0 harness/train.py")
    out = shlex.quote(repo_path(sweep.out))
    script = f'exec {launch} {recipe}"$@" run.dir={out}/"$WANDB_RUN_ID"'
    spec = {"name": sweep.name, "program": "harness/train.py", "method": "grid" if sweep.grid else "random",
            "metric": {"name": "epoch/test_acc", "goal": "maximize"}, "parameters": params,
            "command": ["${env}", "bash", "-c", script, "harness.train", "${args_no_hyphens}"]}
    if not sweep.grid and sweep.random.space:
        spec["run_cap"] = sweep.random.samples
    return spec


def write_wandb(sweep: Sweep, runs: list[Run], keys: list[str], dry_run: bool) -> None:
    spec = wandb_definition(sweep, runs, keys)
    text = (f"# W&B sweep for {sweep.name}: written by python -m harness.sweep; start agents from the repo "
            f"root\n" + yaml.safe_dump(spec, sort_keys=False))
    path = Path(sweep.out) / "wandb_sweep.yaml"
    if dry_run:
        print(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    project = runs[0].project
    print(f"wrote {path} ({spec['method']}, {len(runs)} runs). From the repository root:\n"
          f"  wandb sweep --project {project} {path}        # prints ENTITY/{project}/SWEEP_ID\n"
          f"  CUDA_VISIBLE_DEVICES=0 wandb agent ENTITY/{project}/SWEEP_ID &   # one agent per GPU (0, 1, ...)")


# ----------------------------------------------------------------------------------------------------
# entry point


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m harness.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", help="sweep YAML, e.g. configs/sweeps/architectures.yaml")
    ap.add_argument("overrides", nargs="*", help="key=value training overrides added to every run")
    ap.add_argument("--dry-run", action="store_true", help="print one command per run; run nothing")
    ap.add_argument("--launcher", choices=["local", "slurm", "wandb"], help="default: the sweep's `launcher`")
    ap.add_argument("--out", help="sweep directory (default: the sweep's `out`, else runs/sweeps/<name>)")
    ap.add_argument("--index", type=int, help="only run number INDEX (0-based, as --dry-run lists them)")
    args = ap.parse_intermixed_args(argv)
    sweep = load_sweep(args.sweep, args.out)
    launcher = args.launcher or sweep.launcher
    every = expand(sweep, args.overrides)
    keys = points(sweep)[0]
    runs = every
    if args.index is not None:
        if not 0 <= args.index < len(every) or launcher == "wandb":
            raise UserError(f"--index {args.index}: sweep {sweep.name} has runs 0..{len(every) - 1} "
                            f"(and --index is for the local and slurm launchers)")
        runs = [every[args.index]]

    if launcher == "local":
        gpus = visible_gpus()
        python, accelerate = local_executables()
        commands = {r.index: train_command(r, python, accelerate, gpu=bool(gpus)) for r in runs}
    else:
        commands = {r.index: train_command(r, "python", "accelerate", gpu=True) for r in runs}
    if args.dry_run:
        for r in runs:
            print(shlex.join(commands[r.index]))
    if launcher == "slurm":
        return submit_slurm(sweep, every, runs, args.dry_run)
    if launcher == "wandb":
        return write_wandb(sweep, runs, keys, args.dry_run)
    if args.dry_run:
        return

    done = sum(r.done for r in runs)
    print(f"sweep {sweep.name}: {len(runs)} runs ({done} already done) in {sweep.out}, "
          f"{'GPUs ' + ','.join(gpus) if gpus else 'CPU, one run at a time'}", flush=True)
    failures = run_local(runs, commands, gpus)
    Path(sweep.out).mkdir(parents=True, exist_ok=True)
    (Path(sweep.out) / "failures.txt").write_text("".join(f"{r.name}\t{why}\t{r.dir / 'launch.log'}\n"
                                                          for r, why in failures))
    if failures:
        print(f"sweep {sweep.name}: {len(failures)} of {len(runs)} runs failed:")
        for r, why in failures:
            print(f"  {r.name}: {why} (log {r.dir / 'launch.log'})")
        raise SystemExit(1)
    print(f"sweep {sweep.name}: all {len(runs)} runs have summary.json. Report: "
          f"python -m harness.report {sweep.out} --out {sweep.out}/report")


if __name__ == "__main__":
    C.run_cli(main)
