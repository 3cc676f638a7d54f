"""Reports from real run directories: two models trained for one epoch on tiny CIFAR files, simple_cnn
again as a real 2-process DDP run on the CPU (accelerate launch + gloo) for the scaling table, and a run
that really crashed after writing its config (listed as incomplete). Also the W&B paths that can be
checked offline, and the DDP-overhead measurement's command line."""
from __future__ import annotations

import csv
import json
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import FAST, make_cifar, run_harness
from harness import report as R
from harness.errors import UserError


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    data = make_cifar(root / "data")
    runs = root / "runs"
    common = FAST + [f"data.root={data}", "data.download=false"]
    ddp = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "launch/accelerate/cpu_ddp.yaml",
           "--main_process_port", "0", "harness/train.py"]
    jobs = [
        (common + [f"run.dir={runs / 'simple_cnn-1'}"], None, True),
        (common + ["model.name=lenet5", f"run.dir={runs / 'lenet5-1'}"], None, True),
        # same 32 images per process as the 1-process run: a weak-scaling pair
        (common + ["train.batch_size=64", f"run.dir={runs / 'simple_cnn-2'}"], ddp, True),
        # more validation images than training images: harness.train stops after writing config.yaml
        (common + ["data.val_size=100000", f"run.dir={runs / 'crashed'}"], None, False),
    ]
    # 2 cores: running them side by side roughly halves the wall time (each process has one thread)
    with ThreadPoolExecutor(len(jobs)) as pool:
        procs = list(pool.map(lambda j: run_harness(j[0], launcher=j[1], check=j[2]), jobs))
    assert procs[3].returncode != 0 and not (runs / "crashed" / "summary.json").exists()
    return runs


def summary(runs: Path, name: str) -> dict:
    return json.loads((runs / name / "summary.json").read_text())


def test_report_from_run_directories(runs, tmp_path):
    out = tmp_path / "report"
    R.main([str(runs), "--out", str(out)])
    md = (out / "report.md").read_text()
    assert "4 runs" in md and "3 complete, 1 incomplete" in md

    arch = md.split("## Architecture comparison")[1].split("##")[0]
    rows = [line for line in arch.splitlines() if line.startswith("| ") and "model" not in line]
    assert sorted(r.split("|")[1].strip() for r in rows) == ["lenet5", "simple_cnn", "simple_cnn"]
    s = summary(runs, "lenet5-1")
    lenet = next(r for r in rows if "lenet5" in r)
    assert f"{s['params'] / 1e6:.2f}" in lenet and f"{100 * s['test_acc']:.2f}%" in lenet

    # scaling: simple_cnn at 1 and 2 processes, efficiency = (ips_2 / 2) / ips_1 from the summaries
    one, two = summary(runs, "simple_cnn-1"), summary(runs, "simple_cnn-2")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    efficiency = (two["train_images_per_s"] / 2) / one["train_images_per_s"]
    scaling = md.split("## Scaling")[1].split("##")[0]
    assert f"{100 * efficiency:.1f}%" in scaling and "| simple_cnn | 32 | 2 |" in scaling
    assert "lenet5" not in scaling  # one world size only: no scaling rows
    with open(out / "scaling.csv") as f:
        assert [int(r["processes"]) for r in csv.DictReader(f)] == [1, 2]

    incomplete = md.split("## Incomplete runs")[1].split("##")[0]
    assert "crashed" in incomplete and "incomplete" in incomplete and "no checkpoint" in incomplete
    with open(out / "runs.csv") as f:
        table = {r["name"]: r for r in csv.DictReader(f)}
    assert set(table) == {"simple_cnn-1", "simple_cnn-2", "lenet5-1", "crashed"}
    assert table["crashed"]["status"].startswith("incomplete") and table["crashed"]["model"] == "simple_cnn"
    for png in ("accuracy_curves.png", "params_vs_accuracy.png", "scaling.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_report_cli_on_an_empty_folder_is_one_clear_line(tmp_path):
    proc = run_harness([str(tmp_path), "--out", str(tmp_path / "r")], module="harness.report", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no run directories under")


def test_wandb_offline_says_so(tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a W&B key
    with pytest.raises(UserError, match="W&B is offline here.*works offline from run directories"):
        R.main(["--wandb-project", "me/harness", "--out", str(tmp_path / "r")])


def test_record_from_wandb_reads_what_the_tracker_logs():
    """A stand-in for a wandb.apis.public.Run (not real data): only checks the conversion of the keys
    harness.run.Tracker logs (`epoch/<key>`, `step/<key>`) and the nested config."""
    rows = [{"step/images_per_s": 2000.0, "step/images_per_s_per_device": 500.0},
            {"epoch/epoch": 1, "epoch/test_acc": 0.5, "epoch/images_per_s": 900.0, "epoch/train_s": 10.0},
            {"epoch/epoch": 2, "epoch/test_acc": 0.7, "epoch/images_per_s": 1000.0, "epoch/train_s": 20.0},
            {"epoch/epoch": 3, "epoch/test_acc": 0.65, "epoch/images_per_s": 1100.0, "epoch/train_s": 30.0}]
    run = types.SimpleNamespace(name="r1", id="abc", state="finished", summary={"_runtime": 42.0},
                                config={"model": {"name": "lenet5"}, "data": {"dataset": "cifar10"},
                                        "train": {"epochs": 3, "batch_size": 512, "target_acc": 0.6}},
                                scan_history=lambda: rows)
    rec = R.record_from_wandb(run, "me/harness")
    assert rec["status"] == "complete" and rec["world_size"] == 4 and rec["params"] == 62006
    assert rec["final_test_acc"] == 0.65 and rec["best_test_acc"] == 0.7 and rec["best_test_epoch"] == 2
    assert rec["images_per_s"] == 1050.0  # median after the first epoch
    assert rec["time_to_target_s"] == 20.0 and rec["wall_s"] == 42.0


def test_ddp_overhead_measures_both(tmp_path):
    proc = run_harness(["--model", "lenet5", "--batch", "4", "--steps", "2", "--rounds", "1", "--warmup", "1"],
                       module="harness.ddp_overhead")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == "gloo" and result["steps_each"] == 2
    assert result["plain_step_ms"] > 0 and result["ddp_step_ms"] > 0
