"""Sweeps (harness/sweep/): expansion (grid, random, launch keys, validation), the three launchers' outputs,
the key=value CLI, and the local launcher running real tiny runs on the CPU (skipping finished ones,
recording failures, a progress line after each run)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import FAST, REPO, make_cifar, run_harness
from harness import config as C
from harness import sweep as S
from harness.cli import parse_args
from harness.errors import UserError
from harness.models import list_models

SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


def write_sweep(tmp_path: Path, body: dict, name: str = "t") -> Path:
    body = {"name": name, "out": str(tmp_path / "out"), **body}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def expand(path: Path, cli: list[str] | None = None) -> list[S.Run]:
    return S.expand(S.load_sweep(path), cli)


def test_grid_is_the_cartesian_product_with_readable_unique_names(tmp_path):
    runs = expand(write_sweep(tmp_path, {"overrides": {"train": {"epochs": 3}},
                                         "grid": {"model.name": ["simple_cnn", "lenet5"],
                                                  "optim.lr": [0.1, 0.05], "gpus": [1, 2]}}))
    assert len(runs) == 8
    names = [r.name for r in runs]
    assert len(set(names)) == 8
    assert names[0] == "simple_cnn-lr0.1-1gpu" and names[-1] == "lenet5-lr0.05-2gpu"
    for r in runs:
        assert f"run.dir={tmp_path / 'out' / r.name}" == r.overrides[-1]  # its own directory, last word
        assert "run.wandb_group=t" in r.overrides and "train.resume=auto" in r.overrides
        assert "train.epochs=3" in r.overrides  # nested fixed overrides are flattened
        assert not any(o.startswith("gpus=") for o in r.overrides)  # a launch key, not a config key
    assert {r.gpus for r in runs} == {1, 2}


def test_batch_per_gpu_keeps_the_per_gpu_batch(tmp_path):
    runs = expand(write_sweep(tmp_path, {"overrides": {"batch_per_gpu": 64}, "grid": {"gpus": [1, 2, 4]}}))
    assert [r.resolved["train"]["batch_size"] for r in runs] == [64, 128, 256]
    assert [r.name for r in runs] == ["1gpu", "2gpu", "4gpu"]


def test_random_search_is_seeded_and_in_range(tmp_path):
    space = {"optim.lr": {"min": 0.01, "max": 0.5, "log": True}, "model.name": ["simple_cnn", "lenet5"],
             "run.seed": {"min": 0, "max": 1000}}
    runs = expand(write_sweep(tmp_path, {"random": {"samples": 6, "seed": 3, "space": space}}))
    again = expand(write_sweep(tmp_path, {"random": {"samples": 6, "seed": 3, "space": space}}))
    other = expand(write_sweep(tmp_path, {"random": {"samples": 6, "seed": 4, "space": space}}))
    assert len(runs) == 6 and len({r.name for r in runs}) == 6
    assert [r.point for r in runs] == [r.point for r in again]
    assert [r.point for r in runs] != [r.point for r in other]
    for r in runs:
        assert 0.01 <= r.resolved["optim"]["lr"] <= 0.5
        assert isinstance(r.resolved["run"]["seed"], int) and 0 <= r.resolved["run"]["seed"] <= 1000


@pytest.mark.parametrize("body, words", [
    ({"grid": {"train.epoch": [1, 2]}}, ["train.epoch", "run epoch1", "epochs"]),  # a typo, with the fix
    ({"overrides": {"optim.lr": "fast"}, "grid": {"model.name": ["lenet5"]}}, ["optim.lr", "run lenet5"]),
    ({"grid": {"model.name": ["resnet9000"]}}, ["resnet9000", "run resnet9000"]),
    ({"grid": {"gpus": [3]}, "overrides": {"train.batch_size": 128}}, ["divide", "run 3gpu"]),
    ({"gird": {"model.name": ["lenet5"]}}, ["gird", "grid"]),  # the sweep file's own keys are checked too
])
def test_bad_sweeps_fail_at_expansion_naming_key_and_run(tmp_path, body, words):
    with pytest.raises(C.ConfigError) as e:
        expand(write_sweep(tmp_path, body))
    for word in words:
        assert word in str(e.value)


def test_cli_override_of_a_varied_key_is_refused(tmp_path):
    with pytest.raises(C.ConfigError, match="varied"):
        expand(write_sweep(tmp_path, {"grid": {"model.name": ["lenet5", "simple_cnn"]}}), ["model.name=vgg11"])


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_repository_sweeps_expand(path):
    runs = S.expand(S.load_sweep(path))
    assert runs and len({r.name for r in runs}) == len(runs)


def test_architectures_sweep_covers_the_zoo():
    runs = S.expand(S.load_sweep(REPO / "configs" / "sweeps" / "architectures.yaml"))
    assert sorted({r.resolved["model"]["name"] for r in runs}) == list_models()  # each model (x seeds)


def test_scaling_sweep_is_resnet18_at_1_to_8_gpus_same_per_gpu_batch():
    runs = S.expand(S.load_sweep(REPO / "configs" / "sweeps" / "scaling.yaml"))
    assert [r.gpus for r in runs] == [1, 2, 4, 8]
    assert {r.resolved["model"]["name"] for r in runs} == {"resnet18"}
    assert len({r.resolved["train"]["batch_size"] // r.gpus for r in runs}) == 1


def test_dry_run_prints_one_command_per_run_and_runs_nothing(tmp_path):
    path = write_sweep(tmp_path, {"grid": {"model.name": ["simple_cnn", "lenet5"], "gpus": [1, 2]}})
    proc = run_harness([str(path), "dry_run=true", "train.epochs=1"], module="harness.sweep")
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4 and all("harness" in line for line in lines)
    assert all("train.epochs=1" in line for line in lines)
    assert sum("accelerate" in line and "--num_processes 2" in line for line in lines) == 2
    # like with like: the 1-process runs start the same way, with the same threads per process
    assert all(" launch --config_file launch/accelerate/cpu_ddp.yaml" in line for line in lines)
    assert sum("--num_processes 1" in line for line in lines) == 2
    assert all("--num_cpu_threads_per_process 1" in line for line in lines)  # CPU: one thread per process
    assert not (tmp_path / "out").exists()


def test_threads_per_process_is_the_same_for_every_run(tmp_path):
    path = write_sweep(tmp_path, {"threads_per_process": 3, "grid": {"gpus": [1, 2]}})
    runs = expand(path)
    assert [r.threads for r in runs] == [3, 3]
    from harness.sweep.spec import train_command

    commands = [train_command(r, "accelerate", gpu=False) for r in runs]
    assert [c[c.index("--num_cpu_threads_per_process") + 1] for c in commands] == ["3", "3"]
    assert [c[:2] for c in commands] == [["accelerate", "launch"]] * 2
    from harness.sweep.local import run_env

    env = run_env(runs[0], [])
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert run_env(runs[0], ["2", "3"])["CUDA_VISIBLE_DEVICES"] == "2,3"
    bad = write_sweep(tmp_path, {"threads_per_process": -1, "grid": {"gpus": [1]}}, "bad")
    with pytest.raises(C.ConfigError, match="threads_per_process=-1"):
        expand(bad)


def test_slurm_launcher(tmp_path, monkeypatch, capsys):
    path = write_sweep(tmp_path, {"grid": {"model.name": ["simple_cnn", "lenet5"], "gpus": [1, 2]},
                                  "slurm": {"sbatch_args": ["--partition=gpu"], "max_parallel": 2}})
    S.main([str(path), "launcher=slurm", "dry_run=true"])
    out = capsys.readouterr().out.splitlines()
    sbatch = [line for line in out if line.startswith("sbatch")]
    assert len(out) == 6 and len(sbatch) == 2  # 4 commands, one array per GPU count
    assert "--array=0,2%2" in sbatch[0] and "--gpus-per-node=1" in sbatch[0]
    assert "--array=1,3%2" in sbatch[1] and "--gpus-per-node=2" in sbatch[1]
    assert all("--partition=gpu" in s and s.endswith(f"launch/slurm/sweep.sbatch {tmp_path}/out/commands.txt")
               for s in sbatch)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(UserError, match="sbatch is not on PATH"):
        S.main([str(path), "launcher=slurm"])
    lines = (tmp_path / "out" / "commands.txt").read_text().splitlines()
    assert len(lines) == 4 and all(line.startswith("accelerate launch") for line in lines)
    assert "harness/train.py" in lines[1] and "--num_processes 1" in lines[0] and "--num_processes 2" in lines[1]
    # threads per process from the array task's CPUs (sweep.sbatch's --cpus-per-task=16) over the largest run's
    # 2 processes, not from this (login) machine: the same 8 for every run
    assert all("--num_cpu_threads_per_process 8 " in line for line in lines)


def test_slurm_threads_come_from_the_jobs_cpus_not_the_submitting_machine(tmp_path, capsys):
    S.main([str(REPO / "configs" / "sweeps" / "scaling.yaml"), "launcher=slurm", "dry_run=true"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("accelerate")]
    assert len(lines) == 4 and all("--num_cpu_threads_per_process 2 " in line for line in lines)  # 16 CPUs / 8
    for args, threads in ((["--cpus-per-task=32"], 4), (["-c", "64"], 8), (["-c24"], 3)):
        sweep = S.load_sweep(write_sweep(tmp_path, {"launcher": "slurm", "slurm": {"sbatch_args": args},
                                                    "grid": {"gpus": [1, 8]}}))
        assert {r.threads for r in S.expand(sweep)} == {threads}
    few = S.load_sweep(write_sweep(tmp_path, {"launcher": "slurm", "slurm": {"sbatch_args": ["--cpus-per-task=4"]},
                                              "grid": {"gpus": [1, 8]}}))
    with pytest.raises(C.ConfigError, match=r"--cpus-per-task=4 is fewer CPUs than the 8 processes"):
        S.expand(few)


def test_array_spec():
    assert S.array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert S.array_spec([3]) == "3"


def test_wandb_launcher_writes_a_sweep_definition(tmp_path, capsys):
    body = {"overrides": {"train.epochs": 2}, "grid": {"model.name": ["simple_cnn", "lenet5"], "optim.lr": [0.1, 0.2]}}
    # the agents' machines are unknown here: their threads per process are the sweep file's to say
    with pytest.raises(C.ConfigError, match="W&B agents' machines are unknown here; set threads_per_process"):
        S.main([str(write_sweep(tmp_path, body)), "launcher=wandb"])
    S.main([str(write_sweep(tmp_path, body)), "launcher=wandb", "threads_per_process=4"])
    assert "--num_cpu_threads_per_process 4 " in " ".join(yaml.safe_load(
        (tmp_path / "out" / "wandb_sweep.yaml").read_text())["command"])
    path = write_sweep(tmp_path, {**body, "threads_per_process": 4})
    S.main([str(path), "launcher=wandb"])
    spec = yaml.safe_load((tmp_path / "out" / "wandb_sweep.yaml").read_text())
    assert spec["method"] == "grid"
    assert spec["metric"] == {"name": "best_val_acc", "goal": "maximize"}  # validation accuracy, not the test set
    assert spec["parameters"]["model.name"] == {"values": ["simple_cnn", "lenet5"]}
    assert spec["parameters"]["train.epochs"] == {"value": 2}
    assert spec["parameters"]["run.wandb_group"] == {"value": "t"}
    assert spec["command"][-1] == "${args_no_hyphens}" and "harness.train" in " ".join(spec["command"])
    printed = capsys.readouterr()
    assert "wandb agent" in printed.out
    # no data.val_size in this sweep: no validation accuracy exists, and the user is told so
    assert "no validation set" in printed.err and "data.val_size" in printed.err
    assert "WARNING" in (tmp_path / "out" / "wandb_sweep.yaml").read_text()
    with_val = write_sweep(tmp_path, {"overrides": {"data.val_size": 100}, "grid": {"optim.lr": [0.1]},
                                    "threads_per_process": 4}, "v")
    S.main([str(with_val), "launcher=wandb"])
    assert "no validation set" not in capsys.readouterr().err
    # what an agent runs for the first grid point: W&B's own substitution (f"{name}={value}" per parameter,
    # ${env} -> /usr/bin/env), with a stand-in `accelerate` that prints its arguments: the agent launches
    # every run as the local and Slurm launchers do (accelerate launch, 1 process included, fixed threads)
    agent_args = [f"{k}={v['value'] if 'value' in v else v['values'][0]}" for k, v in spec["parameters"].items()]
    cmd = [part for c in spec["command"]
           for part in {"${env}": ["/usr/bin/env"], "${args_no_hyphens}": agent_args}.get(c, [c])]
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "accelerate").write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    (tmp_path / "bin" / "accelerate").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "WANDB_RUN_ID": "abc123"}
    argv = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    script = argv.index("harness/train.py")
    assert argv[0] == "launch" and argv[argv.index("--num_processes") + 1] == "1"
    assert argv[argv.index("--num_cpu_threads_per_process") + 1] == "4"
    cfg = parse_args(C.Config, argv[script + 1:])
    assert cfg.run.dir == f"{tmp_path}/out/abc123" and cfg.run.wandb is True and cfg.run.wandb_group == "t"
    assert (cfg.model.name, cfg.optim.lr, cfg.train.epochs) == ("simple_cnn", 0.1, 2)
    random = write_sweep(tmp_path, {"random": {"samples": 5, "space": {"optim.lr": {"min": 0.01, "max": 0.3,
                                                                                       "log": True}}}}, "r")
    spec = S.wandb_definition(S.load_sweep(random), S.expand(S.load_sweep(random)), ["optim.lr"])
    assert spec["method"] == "random" and spec["run_cap"] == 5
    assert spec["parameters"]["optim.lr"]["distribution"] == "log_uniform_values"


def test_local_launcher_runs_tiny_runs_then_skips_them(tmp_path):
    """Two real (tiny) training runs on the CPU, one after the other; the second invocation skips both;
    a third with a changed config refuses to reuse their directories."""
    data = make_cifar(tmp_path / "data")
    fixed = dict(C.parse_override(o) for o in FAST)
    fixed.update({"data.root": str(data), "data.download": False})
    path = write_sweep(tmp_path, {"overrides": fixed, "grid": {"model.name": ["simple_cnn", "lenet5"]}})
    out = tmp_path / "out"
    first = run_harness([str(path)], module="harness.sweep")
    # a progress line after each run: finished / done / failed / remaining, and an ETA while runs remain
    assert "sweep t: 1/2 finished (1 done, 0 failed, 1 remaining) | ETA 0:" in first.stdout
    assert "sweep t: 2/2 finished (2 done, 0 failed, 0 remaining)" in first.stdout
    for name in ("simple_cnn", "lenet5"):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["model"] == name
        # every run through accelerate launch, its threads fixed by the sweep and recorded
        prov = json.loads((out / name / "provenance.json").read_text())
        assert prov["launcher"] == "accelerate launch (torchrun)"
        assert prov["threads"]["torch_threads"] == 1 and prov["threads"]["OMP_NUM_THREADS"] == "1"
        assert prov["threads"]["MKL_NUM_THREADS"] == "1" and prov["threads"]["set_by"] == "sweep threads_per_process=1"
        assert yaml.safe_load((out / name / "config.yaml").read_text())["run"]["wandb_group"] == "t"
    mtime = (out / "lenet5" / "metrics.jsonl").stat().st_mtime
    again = run_harness([str(path)], module="harness.sweep")
    assert again.stdout.count("skip") == 2 and "start" not in again.stdout
    assert (out / "lenet5" / "metrics.jsonl").stat().st_mtime == mtime
    changed = run_harness([str(path), "train.epochs=2"], module="harness.sweep", check=False)
    assert changed.returncode == 1 and changed.stdout.count("another config") >= 2


def test_a_run_directory_of_the_same_recipe_is_no_mismatch(tmp_path):
    """A run written before keys were added to the harness (data.mixup) or removed from it (train.tta_flip,
    off), or resumed with train.resume_force=true, is the sweep's run; another optim.lr is not."""
    (run,) = expand(write_sweep(tmp_path, {"grid": {"optim.lr": [0.1]}}))
    stored = json.loads(json.dumps(run.resolved))
    del stored["data"]["mixup"]
    stored["train"].update(tta_flip=False, resume_force=True)
    run.dir.mkdir(parents=True)
    (run.dir / "config.yaml").write_text(yaml.safe_dump(stored))
    assert run.mismatch() is None
    stored["optim"]["lr"] = 0.2
    (run.dir / "config.yaml").write_text(yaml.safe_dump(stored))
    assert "another config (optim.lr: 0.2 -> 0.1)" in run.mismatch()


def test_local_launcher_records_failures_and_goes_on(tmp_path):
    fixed = dict(C.parse_override(o) for o in FAST)
    fixed.update({"data.root": str(tmp_path / "no-data-here"), "data.download": False})
    path = write_sweep(tmp_path, {"overrides": fixed, "grid": {"run.seed": [1, 2]}})
    proc = run_harness([str(path)], module="harness.sweep", check=False)
    assert proc.returncode == 1
    assert "2 of 2 runs failed" in proc.stdout and "seed1:" in proc.stdout and "seed2:" in proc.stdout
    assert "sweep t: 2/2 finished (0 done, 2 failed, 0 remaining)" in proc.stdout
    failures = (tmp_path / "out" / "failures.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in failures] == ["seed1", "seed2"]
    assert (tmp_path / "out" / "seed2" / "launch.log").stat().st_size > 0


def test_bad_sweep_on_the_command_line_is_one_line(tmp_path):
    path = write_sweep(tmp_path, {"grid": {"train.epoch": [1]}})
    proc = run_harness([str(path), "dry_run=true"], module="harness.sweep", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: sweep t, run epoch1: unknown config key 'train.epoch'")


def test_key_value_options_and_bad_ones(tmp_path):
    path = write_sweep(tmp_path, {"grid": {"model.name": ["simple_cnn", "lenet5"]}})
    proc = run_harness([str(path), "dry_run=true", "index=1", f"out={tmp_path / 'elsewhere'}"], module="harness.sweep")
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "model.name=lenet5" in lines[0] and f"run.dir={tmp_path / 'elsewhere' / 'lenet5'}" in lines[0]
    bad = run_harness([str(path), "launcher=kubernetes"], module="harness.sweep", check=False)
    assert bad.returncode != 0 and "launcher" in bad.stderr and "Traceback" not in bad.stderr
    helped = run_harness(["--help"], module="harness.sweep")
    assert "dry_run=false" in helped.stdout and "print one command per run" in helped.stdout
