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
    (data / "test_exact.json").write_text(json.dumps({"indices": list(range(0, 128, 2))}))  # as cifar10_pack.py
    runs = root / "runs"
    common = FAST + [f"data.root={data}", "data.download=false"]
    ddp = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "launch/accelerate/cpu_ddp.yaml",
           "--main_process_port", "0", "harness/train.py"]
    one = ddp[:5] + ["--num_processes", "1"] + ddp[5:]  # every run through the same launcher, as the sweep
    jobs = [
        (common + [f"run.dir={runs / 'simple_cnn-1'}"], one, True),
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
    # top-5, and the test subset with its size and interval, in their own columns
    cells = [c.strip() for c in lenet.split("|")]
    assert cells[5] == f"{100 * s['test_top5']:.2f}%"
    assert cells[6] == (f"{100 * s['test_subset_acc']:.2f}% (test_exact, n=64, 95% CI "
                        f"{100 * s['test_subset_ci95_low']:.2f}–{100 * s['test_subset_ci95_high']:.2f}%)")

    # scaling: simple_cnn at 1 and 2 processes, efficiency = (ips_2 / 2) / ips_1 from the summaries
    one, two = summary(runs, "simple_cnn-1"), summary(runs, "simple_cnn-2")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    efficiency = (two["train_images_per_s"] / 2) / one["train_images_per_s"]
    scaling = md.split("## Scaling")[1].split("##")[0]
    assert f"{100 * efficiency:.1f}%" in scaling and "| simple_cnn | 32 | 2 |" in scaling
    assert "lenet5" not in scaling  # one world size only: no scaling rows
    with open(out / "scaling.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["processes"]) for r in rows] == [1, 2]
    # like with like: both runs through accelerate launch, one thread per process (provenance.json)
    assert [r["threads_per_process"] for r in rows] == ["1", "1"]
    assert {r["launcher"] for r in rows} == {"accelerate launch (torchrun)"}
    assert not any("unlike" in r["flags"] for r in rows)
    # one epoch each: n = 1, the table says so, and the efficiency is flagged: nothing to judge it by
    assert "(n=1)" in scaling and rows[0]["flags"] == ""
    assert "too few: efficiency from a single measurement at 1 proc and 2 proc" in rows[1]["flags"]

    incomplete = md.split("## Incomplete runs")[1].split("##")[0]
    assert "crashed" in incomplete and "incomplete" in incomplete and "no checkpoint" in incomplete
    with open(out / "runs.csv") as f:
        table = {r["name"]: r for r in csv.DictReader(f)}
    assert table["lenet5-1"]["threads"] == "1" and table["lenet5-1"]["launcher"] == "python"
    assert set(table) == {"simple_cnn-1", "simple_cnn-2", "lenet5-1", "crashed"}
    assert table["crashed"]["status"].startswith("incomplete") and table["crashed"]["model"] == "simple_cnn"
    lenet_csv = table["lenet5-1"]
    assert float(lenet_csv["test_subset_acc"]) == s["test_subset_acc"] and lenet_csv["test_subset_images"] == "64"
    for png in ("accuracy_curves.png", "params_vs_accuracy.png", "scaling.png", "train_loss.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "## Training loss" in md  # from the epoch rows read_run read, not read again


def test_report_cli_on_an_empty_folder_is_one_clear_line(tmp_path):
    proc = run_harness([str(tmp_path), "--out", str(tmp_path / "r")], module="harness.report", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no run directories under")


def test_wandb_offline_says_so(tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a W&B key
    with pytest.raises(UserError, match="W&B is offline here.*works offline from run directories"):
        R.main(["wandb_project=me/harness", "--out", str(tmp_path / "r")])


def test_record_from_wandb_reads_what_the_tracker_logs():
    """A stand-in for a wandb.apis.public.Run (not real data): only checks the conversion of the keys
    harness.run.tracker.Tracker logs (`epoch/<key>`, `step/<key>`) and the nested config."""
    rows = [{"perf/images_per_s": 2000.0, "perf/images_per_s_per_device": 500.0},  # Tracker's W&B names
            {"train/epoch": 1, "test/acc": 0.5, "perf/epoch_images_per_s": 900.0, "perf/train_s": 10.0},
            {"train/epoch": 2, "test/acc": 0.7, "perf/epoch_images_per_s": 1000.0, "perf/train_s": 20.0},
            {"train/epoch": 3, "test/acc": 0.65, "perf/epoch_images_per_s": 1100.0, "perf/train_s": 30.0}]
    run = types.SimpleNamespace(name="r1", id="abc", state="finished", summary={"_runtime": 42.0},
                                config={"model": {"name": "lenet5"}, "data": {"dataset": "cifar10"},
                                        "train": {"epochs": 3, "batch_size": 512, "target_acc": 0.6}},
                                scan_history=lambda: rows)
    rec = R.record_from_wandb(run, "me/harness")
    assert rec["status"] == "complete" and rec["world_size"] == 4 and rec["params"] == 62006
    assert rec["final_test_acc"] == 0.65 and rec["best_test_acc"] == 0.7 and rec["best_test_epoch"] == 2
    assert rec["images_per_s"] == 1050.0  # median after the first epoch
    assert rec["time_to_target_s"] == 20.0 and rec["wall_s"] == 42.0


# ----------------------------------------------------------------------------------------------------
# repeats over run.seed: statistics against numpy on known numbers


def _fake_run(root: Path, name: str, model: str, seed: int, val: float, test: float, train_s: float, ips: float,
              lr: float = 0.1, start: tuple[str, ...] = ()) -> None:
    """A finished run directory with chosen numbers (config.yaml as harness.train writes it); `start`: how
    it was started (train.resume... overrides)."""
    import yaml

    from harness import config as C

    d = root / name
    d.mkdir(parents=True)
    cfg = C.load(C.Config, None, [f"model.name={model}", f"run.seed={seed}", f"run.dir={d}", f"optim.lr={lr}", *start])
    (d / "config.yaml").write_text(yaml.safe_dump(C.to_dict(cfg), sort_keys=False))
    (d / "summary.json").write_text(json.dumps({
        "model": model, "dataset": "cifar10", "params": 1000, "gflops": 0.5, "test_acc": test, "best_val_acc": val,
        "train_s": train_s, "wall_s": train_s + 1, "train_images_per_s": ips, "world_size": 1, "global_batch": 128}))


def test_seed_groups_match_numpy(tmp_path):
    import numpy as np

    vals = {"resnet18": [0.91, 0.93, 0.92, 0.95], "vgg11": [0.88, 0.87, 0.89]}
    tests = {"resnet18": [0.90, 0.925, 0.915, 0.94], "vgg11": [0.86, 0.865, 0.88]}
    times = {"resnet18": [100.0, 104.0, 98.0, 103.0], "vgg11": [50.0, 55.0, 53.0]}
    rates = {"resnet18": [5000.0, 5100.0, 4900.0, 5050.0], "vgg11": [9000.0, 9100.0, 8800.0]}
    for model in vals:
        for seed, (v, t, s, r) in enumerate(zip(vals[model], tests[model], times[model], rates[model])):
            # vgg11's seed 2 was resumed with train.resume_force: how a run started (config.NOT_COMPARED) is
            # no part of its group's recipe
            forced = ("train.resume=auto", "train.resume_force=true") if (model, seed) == ("vgg11", 2) else ()
            _fake_run(tmp_path / "runs", f"{model}-seed{seed}", model, seed, v, t, s, r, start=forced)
    # the same model at another lr is another group, even with the same seeds
    _fake_run(tmp_path / "runs", "vgg11-lr-seed0", "vgg11", 0, 0.99, 0.5, 1.0, 1.0, lr=0.2)

    groups = R.seed_groups([R.read_run(p, tmp_path / "runs") for p in R.find_runs(tmp_path / "runs")])
    assert [(g["model"], g["n"]) for g in groups] == [("vgg11", 1), ("resnet18", 4), ("vgg11", 3)]  # by val acc
    t975 = {3: 3.1824, 2: 4.3027}  # Student t(0.975, n - 1)
    for g in groups[1:]:
        m = g["model"]
        for key, xs in (("val_acc", vals[m]), ("test_acc", tests[m]), ("train_s", times[m]),
                        ("images_per_s", rates[m])):
            xs = np.array(xs)
            half = t975[len(xs) - 1] * xs.std(ddof=1) / np.sqrt(len(xs))
            s = g[key]
            assert s["n"] == len(xs)
            assert s["mean"] == pytest.approx(xs.mean(), rel=1e-12)
            assert s["std"] == pytest.approx(xs.std(ddof=1), rel=1e-12)
            assert (s["ci95_low"], s["ci95_high"]) == pytest.approx((xs.mean() - half, xs.mean() + half), rel=1e-4)
        assert g["seeds"] == list(range(len(vals[m])))
    assert "lr=0.2" in groups[0]["label"] and "lr=0.1" in groups[1]["label"]

    out = tmp_path / "report"
    R.build_report([R.read_run(p, tmp_path / "runs") for p in R.find_runs(tmp_path / "runs")], out, "test")
    md = (out / "report.md").read_text()
    table = md.split("## Over seeds")[1].split("##")[0]
    resnet = next(line for line in table.splitlines() if line.startswith("| 2 | resnet18"))
    assert f"{100 * np.mean(vals['resnet18']):.2f} ± {100 * np.std(vals['resnet18'], ddof=1):.2f}" in resnet
    assert "(n=4" in resnet
    with open(out / "seeds.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[1]["test_acc_mean"]) == pytest.approx(np.mean(tests["resnet18"]))
    assert (out / "pareto.png").is_file()
    # the architecture table ranks by validation accuracy too: the lr=0.2 run (val 0.99, test 0.5) first
    arch = md.split("## Architecture comparison")[1].split("##")[0]
    assert [line for line in arch.splitlines() if line.startswith("| ")][1].split("|")[-2].strip() == "vgg11-lr-seed0"


def test_grad_flow_plot_from_grad_norms_files(tmp_path):
    _fake_run(tmp_path / "runs", "plain", "plainnet18", 0, 0.5, 0.5, 1.0, 1.0)
    _fake_run(tmp_path / "runs", "res", "resnet18", 0, 0.6, 0.6, 1.0, 1.0)
    for name in ("plain", "res"):
        with open(tmp_path / "runs" / name / "grad_norms.jsonl", "w") as f:
            for step in (10, 20, 30):
                f.write(json.dumps({"step": step, "epoch": step / 10, "steps": 10,
                                    "layers": [[f"l{d}", d, 1.0 / (d + 1) / step] for d in range(5)]}) + "\n")
    out = tmp_path / "report"
    R.main([str(tmp_path / "runs"), f"out={out}"])
    assert (out / "grad_flow.png").is_file() and "## Gradient flow" in (out / "report.md").read_text()
    # a start resumed from step 15 logs step 20 again, then 30: the run as it stands, by step, later row first
    with open(tmp_path / "runs" / "res" / "grad_norms.jsonl", "a") as f:
        for step in (20, 30):
            f.write(json.dumps({"step": step, "epoch": step / 10, "steps": 5, "layers": []}) + "\n")
    rows = R.grad_norm_rows(tmp_path / "runs" / "res")
    assert [(r["step"], r["steps"]) for r in rows] == [(10, 10), (20, 5), (30, 5)]


def test_an_impossible_scaling_row_is_flagged_in_table_console_and_plot(tmp_path, capsys):
    """Fabricated records: the sweep smoke's '2 procs | 40.85x | 2042.3%', a 1-process run with torch's
    default threads against 2 processes with one each, started by different launchers."""
    base = {"status": "complete", "model": "lenet5", "precision": "fp32", "device": "cpu", "time_to_target_s": None,
            "global_batch": 32, "world_size": 1, "images_per_s": 100.0, "epoch_rates": [100.0], "threads": 2,
            "launcher": "python", "name": "lenet5-1gpu"}
    two = {**base, "global_batch": 64, "world_size": 2, "images_per_s": 4085.0, "epoch_rates": [4085.0],
           "threads": 1, "launcher": "accelerate launch (torchrun)", "name": "lenet5-2gpu"}
    rows = R.scaling_rows([base, two])
    assert rows[0]["flags"] == "" or "efficiency" not in rows[0]["flags"]
    flags = rows[1]["flags"]
    assert "impossible: efficiency 2042% > 105%" in flags
    assert "unlike: threads per process differs: 2 (1 proc), 1 (2 proc)" in flags
    assert "unlike: launcher differs" in flags
    table = R.scaling_table(rows)
    assert "2042.5% (flagged)" in table and "impossible: efficiency 2042% > 105%" in table
    R.plot_scaling(rows, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    # within 105% and like with like: no flag
    assert "too few: efficiency from a single measurement" in flags
    # within 105%, like with like, two epochs a side: no flag
    base2 = {**base, "epoch_rates": [99.0, 101.0]}
    fine = {**two, "images_per_s": 190.0, "epoch_rates": [188.0, 190.0, 192.0], "threads": 2, "launcher": "python"}
    assert R.scaling_rows([base2, fine])[1]["flags"] == ""


def test_seed_table_accuracy_intervals_stay_in_0_1_and_two_seeds_give_none(tmp_path):
    for seed, test in enumerate([0.02, 0.10, 0.25]):  # raw interval of the mean: -0.17 .. 0.42
        _fake_run(tmp_path / "runs", f"low-seed{seed}", "lenet5", seed, test, test, 1.0, 100.0)
    for seed, test in enumerate([0.0785, 0.1247]):
        _fake_run(tmp_path / "runs", f"two-seed{seed}", "lenet5", seed, test, test, 1.0, 100.0, lr=0.2)
    records = [R.read_run(p, tmp_path / "runs") for p in R.find_runs(tmp_path / "runs")]
    groups = {g["n"]: g for g in R.seed_groups(records)}
    assert groups[3]["test_acc"]["ci95_low"] == 0.0 and groups[3]["val_acc"]["ci95_low"] == 0.0
    assert groups[2]["test_acc"]["ci95_low"] is None
    table = R.seed_table(list(groups.values()))
    assert "n = 2: too few runs for an interval" in table and "95% CI 0.00–" in table and "CI -" not in table


def test_a_runs_rate_samples_are_those_of_the_summarys_median():
    """The n and spread of a run's images/s come from the epoch rates harness.run.metrics.throughput takes
    the median of (after the first epoch; the only one when there is one)."""
    import statistics

    from harness.run import metrics

    for rates in ([500.0], [100.0, 210.0, 190.0, 205.0], [90.0, 300.0]):
        epochs = [{"kind": "epoch", "epoch": i, "images_per_s": r} for i, r in enumerate(rates, 1)]
        samples = R.run_record("r", "s", {}, {}, epochs)["epoch_rates"]
        assert statistics.median(samples) == metrics.throughput(rates) and len(samples) == max(1, len(rates) - 1)


def test_a_seed_groups_clipped_accuracy_interval_is_flagged():
    """Three seeds at 10%, 50% and 90%: the t interval (-49%, 149%) is printed clipped to 0-100% and the group
    is flagged with the raw ends (the seed table's flags column)."""
    from harness.stats import ACCURACY, summarize

    steady = summarize([1.0, 1.0, 1.0])
    group = {"train_s": steady, "images_per_s": steady, "val_acc": summarize([0.5, 0.5, 0.5], bounds=ACCURACY),
             "test_acc": summarize([0.1, 0.5, 0.9], bounds=ACCURACY)}
    flags = R.group_flags(group)
    assert len(flags) == 1 and "leaves its bounds (printed clipped to 0–1)" in flags[0]
