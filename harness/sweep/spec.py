"""A sweep file, its expansion into runs (grid or seeded random samples, launch keys, validation of each
run's training config), run names, and the command that runs one run. The format: harness/sweep/__init__.py."""
from __future__ import annotations

import itertools
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness import config as C
from harness.provenance import REPO

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
    # CPU threads of every process of every run (OMP/MKL_NUM_THREADS, accelerate's
    # --num_cpu_threads_per_process), the same whatever a run's process count, so a scaling row compares
    # like with like. 0: worked out for where the runs run (`sweep_threads`): local, this machine's rule
    # (harness.provenance.default_threads: 1 on a CPU, its cores over the largest process count on a GPU
    # machine); slurm, the job's --cpus-per-task over the largest process count; wandb, set it (the agents'
    # machines are unknown here)
    threads_per_process: int = 0
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
    threads: int = 1  # CPU threads per process (Sweep.threads_per_process, resolved)

    @property
    def done(self) -> bool:
        return (self.dir / "summary.json").is_file()

    def mismatch(self) -> str | None:
        """If the run directory already holds a run of another config (the sweep file was edited but the
        run's name did not change), the keys that differ: skipping or resuming it would be wrong. Compared as
        a resume compares them (config.recipe_changes: keys added to or removed from the harness since, and
        train.resume/resume_force, are no change)."""
        saved = self.dir / "config.yaml"
        if not saved.is_file():
            return None
        diff = C.recipe_changes(yaml.safe_load(saved.read_text()) or {}, C.from_dict(C.Config, self.resolved))
        if not diff:
            return None
        keys = list(diff)
        changes = ", ".join(f"{k}: {C.value_text(diff[k][0])} -> {C.value_text(diff[k][1])}" for k in keys[:4]) + (
            ", ..." if keys[4:] else "")
        return (f"{saved} was written for another config ({changes}); move that run directory away or give "
                f"the sweep another out=DIR")


# ----------------------------------------------------------------------------------------------------
# loading and expansion


def load_sweep(path: str | Path, out: str | None = None) -> Sweep:
    sweep = C.load(Sweep, path)
    sweep.name = sweep.name or Path(path).stem
    sweep.out = out or sweep.out or f"runs/sweeps/{sweep.name}"
    return sweep


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
    from harness.training.checks import check_config  # the trainer's own checks (batch divisible by processes, ...)

    fixed = C.flatten(sweep.overrides)
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
    threads = sweep_threads(sweep, pts, fixed)
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
                        cfg.run.wandb_project, C.to_dict(cfg), threads))
    return runs


SWEEP_SBATCH = REPO / "launch" / "slurm" / "sweep.sbatch"


def slurm_cpus(sweep: Sweep) -> int:
    """CPUs of one array task: --cpus-per-task (or -c) in the sweep's slurm.sbatch_args, else the one
    launch/slurm/sweep.sbatch asks for."""
    args = sweep.slurm.sbatch_args
    for i, arg in enumerate(args):
        m = re.fullmatch(r"(?:--cpus-per-task=|-c=?)(\d+)", arg)
        if m is None and arg in ("--cpus-per-task", "-c") and i + 1 < len(args) and args[i + 1].isdigit():
            return int(args[i + 1])
        if m:
            return int(m.group(1))
    return int(re.search(r"^#SBATCH --cpus-per-task=(\d+)", SWEEP_SBATCH.read_text(), re.M).group(1))


def sweep_threads(sweep: Sweep, pts: list[dict], fixed: dict) -> int:
    """Threads per process for every run, worked out for where the runs run: the sweep's
    threads_per_process, else, over the largest process count of the sweep, this machine's rule for the
    local launcher (harness.provenance.default_threads), a Slurm array task's --cpus-per-task for the
    Slurm one. A W&B agent's machine is unknown here: that launcher needs threads_per_process."""
    where = f"sweep {sweep.name}: threads_per_process={sweep.threads_per_process}"
    if sweep.threads_per_process < 0:
        raise C.ConfigError(f"{where}: 0 (the default rule) or a whole number of threads >= 1")
    if sweep.threads_per_process:
        return sweep.threads_per_process
    most = max((v for p in pts for k, v in {**fixed, **p}.items() if LAUNCH_KEYS.get(k) == "gpus"
                and isinstance(v, int)), default=1)
    if sweep.launcher == "wandb":
        raise C.ConfigError(f"{where}: the W&B agents' machines are unknown here; set threads_per_process (in "
                            f"the sweep file, or threads_per_process=N: e.g. the agents' node's CPU cores over its GPUs)")
    if sweep.launcher == "slurm":
        cpus = slurm_cpus(sweep)
        if cpus < most:
            raise C.ConfigError(f"{where}: --cpus-per-task={cpus} is fewer CPUs than the {most} processes of the "
                                f"sweep's largest run; raise it in slurm.sbatch_args, or set threads_per_process")
        return cpus // most
    import torch

    from harness.provenance import default_threads

    return default_threads("cuda" if torch.cuda.is_available() else "cpu", most)


def launch_command(processes: int, threads: int, accelerate: str, gpu: bool) -> list[str]:
    """`accelerate launch --num_processes k` for every run, k = 1 included, on this node with a free port
    (--main_process_port 0, so concurrent runs on one machine do not collide) and the sweep's threads per
    process: every run of a scaling sweep starts the same way, whatever launcher (local, Slurm, W&B agent)
    starts it. (A 1-process run started with `python -m harness.train` got torch's default threads while
    accelerate gave each of 2 processes one: on the 2-core CPU that made a 2-process lenet5 run '2042%
    efficient'.)"""
    topology = "launch/accelerate/node_8gpu.yaml" if gpu else "launch/accelerate/cpu_ddp.yaml"
    return [accelerate, "launch", "--config_file", topology, "--num_processes", str(processes),
            "--num_cpu_threads_per_process", str(threads), "--main_process_port", "0", "harness/train.py"]


def train_command(run: Run, accelerate: str, gpu: bool) -> list[str]:
    """The command line of one run: `launch_command` + its recipe and overrides."""
    recipe = ["--config", run.config] if run.config else []
    return [*launch_command(run.gpus, run.threads, accelerate, gpu), *recipe, *run.overrides]
