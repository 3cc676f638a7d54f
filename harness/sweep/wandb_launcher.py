"""The W&B launcher: <out>/wandb_sweep.yaml for `wandb sweep`, optimising validation accuracy, and how to
start agents. (Not named wandb.py: it would shadow the library.)

The metric is `best_val_acc`, the run summary's best validation accuracy over epochs (the tracker copies
summary.json into the W&B summary): a plain number. `val/acc` itself is summarised as {"max", "last"}
(define_metric), a nested value a sweep cannot rank by name."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import yaml

from harness import config as C
from harness.sweep.spec import LAUNCH_KEYS, Run, Sweep, launch_command, repo_path

METRIC = {"name": "best_val_acc", "goal": "maximize"}

def wandb_definition(sweep: Sweep, runs: list[Run], keys: list[str]) -> dict:
    """A W&B sweep (method grid/random) whose command runs harness.train with `${args_no_hyphens}`, so
    each parameter arrives as key=value. W&B has no per-run macro for a path, so a small bash wrapper
    puts each run in <out>/$WANDB_RUN_ID (the agent exports WANDB_RUN_ID to the run's process)."""
    gpus = {r.gpus for r in runs}
    if len(gpus) > 1:
        raise C.ConfigError(f"sweep {sweep.name}: the wandb launcher starts every run the same way; it cannot "
                            f"vary gpus (use launcher=local or launcher=slurm)")
    gpus = gpus.pop()
    fixed = C.flatten(sweep.overrides)
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
    # the agent starts every run as the local and Slurm launchers do (accelerate launch, k = 1 included, the
    # sweep's threads per process): a W&B sweep's throughput figures compare like with like too
    launch = shlex.join(launch_command(gpus, runs[0].threads, "accelerate", gpu=True))
    out = shlex.quote(repo_path(sweep.out))
    script = f'exec {launch} {recipe}"$@" run.dir={out}/"$WANDB_RUN_ID"'
    spec = {"name": sweep.name, "program": "harness/train.py", "method": "grid" if sweep.grid else "random",
            "metric": METRIC, "parameters": params,
            "command": ["${env}", "bash", "-c", script, "harness.train", "${args_no_hyphens}"]}
    if not sweep.grid and sweep.random.space:
        spec["run_cap"] = sweep.random.samples
    return spec


def missing_validation(runs: list[Run]) -> str:
    """The sweep's metric is validation accuracy: a run without a validation set never logs it."""
    without = [r.name for r in runs if not r.resolved["data"]["val_size"]]
    if not without:
        return ""
    return (f"the W&B sweep maximises {METRIC['name']}, but {len(without)} of {len(runs)} runs have no validation "
            f"set (data.val_size=0: {', '.join(without[:3])}{', ...' if without[3:] else ''}), so W&B has "
            f"nothing to optimise for them; hold out images with data.val_size (e.g. 5000) in the sweep's overrides")


def write_wandb(sweep: Sweep, runs: list[Run], keys: list[str], dry_run: bool) -> None:
    spec = wandb_definition(sweep, runs, keys)
    text = (f"# W&B sweep for {sweep.name}: written by python -m harness.sweep; start agents from the repo "
            f"root\n" + yaml.safe_dump(spec, sort_keys=False))
    warning = missing_validation(runs)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
        text = f"# WARNING: {warning}\n" + text
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
