"""The benchmark (harness/bench.py) on the CPU with tiny sizes: the CLI end to end once (sweep and ladder in
one process, to pay torch's start-up and the compile once), user errors, and the pure pieces in-process.
"""
from __future__ import annotations

import csv
import json
import math
import types

import pytest
import torch

from conftest import make_cifar, run_harness
from harness import bench
from harness.models import model_facts

FAST = ["steps=2", "warmup=1", "repeats=1", "progress=false"]


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    """One real run: a synthetic-data sweep (2 models x fp32/bf16 x train/infer, eager) and the lenet5
    ladder on tiny CIFAR files (DataLoader with 1 worker, compile on, 'torch' data; DALI skipped on CPU)."""
    root = tmp_path_factory.mktemp("bench")
    data = make_cifar(root / "data", "bin", n_train=128, n_test=16)
    out = root / "out"
    proc = run_harness(["models=simple_cnn,lenet5", "batch_sizes=8", "precision=fp32,bf16", "mode=both",
                        "compile=false", "channels_last=false", "data=synthetic", "ladder=lenet5",
                        "ladder_batch_size=8", "num_workers=1", f"data_root={data}", f"out={out}", "wandb=true",
                        *FAST], module="harness.bench")
    with open(out / "bench.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return out, rows, proc


def test_writes_every_report_file(bench_out):
    out, _, proc = bench_out
    for name in ("bench.csv", "bench.json", "report.md", "images_per_s.png", "ladder.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "images_per_s.png").read_bytes()[:4] == b"\x89PNG"
    assert list((out / "wandb").glob("offline-run-*")), "the W&B run (offline) goes under out/wandb"
    report = (out / "report.md").read_text()
    assert "not a GPU measurement" in report and "## Optimisation ladder: lenet5" in report
    assert "| simple_cnn | train | 8 | fp32 |" in report
    assert "| simple_cnn | train | 8 | fp32 |" in proc.stdout  # the table is printed too
    result = json.loads((out / "bench.json").read_text())
    env = result["environment"]
    assert env["provenance"]["world_size"] == 1 and "torch" in env["provenance"]["versions"]
    assert any("harness.bench" in c or c.endswith("bench.py") for c in env["provenance"]["command"])
    assert len(result["rows"]) == 14


def test_sweep_rows_are_sane(bench_out):
    _, rows, _ = bench_out
    for c in ("model", "batch_size", "precision", "channels_last", "compile", "data", "mode", "images_per_s",
              "step_ms", "params", "gflops", "peak_mem_mb", "tflops", "mfu", "device", "world_size", "step_ms_p10",
              "step_ms_p90", "peak_tflops", "peak_source", "oom_retry_from", "per_device_images_per_s",
              "scaling_efficiency"):
        assert c in rows[0], c
    sweep = [r for r in rows if not r["rung"]]
    assert {(r["model"], r["precision"], r["mode"]) for r in sweep} == {
        (m, p, mode) for m in ("simple_cnn", "lenet5") for p in ("fp32", "bf16") for mode in ("train", "infer")}
    for r in sweep:
        facts = model_facts(r["model"])
        assert float(r["images_per_s"]) > 0 and float(r["step_ms"]) > 0
        assert float(r["step_ms_p10"]) <= float(r["step_ms"]) <= float(r["step_ms_p90"])
        assert float(r["gflops"]) == pytest.approx(facts["gflops"], rel=1e-9)  # taken, not recounted
        assert int(r["params"]) == facts["params"]
        ratio = 3 if r["mode"] == "train" else 1  # training: 3x forward FLOPs
        assert float(r["tflops"]) == pytest.approx(float(r["images_per_s"]) * facts["gflops"] * ratio / 1e3)
        assert float(r["mfu"]) == pytest.approx(float(r["tflops"]) / float(r["peak_tflops"]))
        assert r["peak_source"] == "measured" and r["world_size"] == "1" and r["device"].startswith("cpu")
        assert r["batch_size"] == "8" and r["oom_retry_from"] == "" and r["error"] == ""


def test_ladder_runs_cpu_rungs_and_skips_dali(bench_out):
    _, rows, _ = bench_out
    ladder = {r["rung"]: r for r in rows if r["rung"]}
    assert list(ladder) == [name for name, *_ in bench.RUNGS]
    base = ladder["baseline (seeds)"]
    assert (base["precision"], base["channels_last"], base["compile"], base["data"]) == ("fp32", "False", "False",
                                                                                       "loader")
    assert ladder["+compile"]["compile"] == "True" and ladder["+GPU-resident data"]["data"] == "torch"
    for name in ("baseline (seeds)", "+bf16", "+channels_last", "+compile", "+GPU-resident data"):
        r = ladder[name]
        assert r["error"] == "" and float(r["images_per_s"]) > 0, (name, r["error"])
        assert float(r["speedup_total"]) == pytest.approx(float(r["images_per_s"]) / float(base["images_per_s"]))
    assert float(base["speedup_step"]) == 1.0
    assert "no GPU" in ladder["+DALI"]["skip_reason"] and ladder["+DALI"]["images_per_s"] == ""


@pytest.mark.parametrize("args, message", [
    (["models=resnet18,not_a_model"], "unknown model 'not_a_model'"),
    (["batch_size=8"], "unknown config key 'batch_size'"),
])
def test_bad_input_is_one_clear_line(args, message):
    proc = run_harness(args + FAST, module="harness.bench", check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_oom_halves_the_batch_and_records_it(monkeypatch):
    """measure() is replaced by one that runs out of memory above 2 images: the row says it retried."""
    calls = []

    def fake_measure(spec, batch_size, ctx):
        calls.append(batch_size)
        if batch_size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return {"images_per_s": 100.0, "step_ms": 20.0, "step_ms_p10": 19.0, "step_ms_p90": 21.0,
                "peak_mem_mb": 1.0, "warmup_s": 0.1}

    monkeypatch.setattr(bench, "measure", fake_measure)
    ctx = bench.Context(bench.BenchConfig(), types.SimpleNamespace(reduce=lambda t, op: t), torch.device("cpu"),
                        0, 1, {"bf16": (10.0, "table")}, "test device")
    row = bench.run_row(bench.Spec("lenet5", 8, "bf16", True, False, "synthetic", "train"), ctx)
    assert calls == [8, 4, 2]
    assert row["batch_size"] == 2 and row["oom_retry_from"] == 8
    assert row["mfu"] == pytest.approx(100.0 * 3 * model_facts("lenet5")["gflops"] / 1e3 / 10.0)
    assert row["peak_source"] == "table"


def test_known_peaks_and_parsing():
    assert bench.peak_from_table("NVIDIA H100 80GB HBM3", "bf16") == 989
    assert bench.peak_from_table("NVIDIA H100 PCIe", "bf16") == 756
    assert bench.peak_from_table("NVIDIA H200", "bf16") == 989
    assert bench.peak_from_table("NVIDIA A100-SXM4-80GB", "bf16") == 312
    assert bench.peak_from_table("NVIDIA L40S", "bf16") == 362
    assert bench.peak_from_table("cpu (x86_64, 2 cores)", "bf16") is None
    assert bench.resolve_models("lenet5,resnet1*,lenet5", "models") == ["lenet5", "resnet18"]
    with pytest.raises(bench.UserError, match="no model matches 'zz\\*'"):
        bench.resolve_models("zz*", "models")
    assert bench.parse_ints("8, 16", "batch_sizes") == [8, 16]
    with pytest.raises(bench.UserError, match="batch_sizes"):
        bench.parse_ints("8,x", "batch_sizes")
    with pytest.raises(bench.UserError, match="precision"):
        bench.sweep_specs(bench.BenchConfig(precision="fp32,fp16"))


def test_scaling_efficiency_against_one_process(tmp_path):
    one = {"model": "lenet5", "batch_size": 8, "precision": "bf16", "channels_last": True, "compile": False,
           "data": "synthetic", "mode": "train", "rung": "", "images_per_s": 1000.0, "world_size": 1}
    bench.write_csv(tmp_path / "bench.csv", [one])
    two = {**one, "images_per_s": 1800.0, "per_device_images_per_s": 900.0, "world_size": 2}
    other = {**two, "model": "simple_cnn"}
    note = bench.add_scaling([two, other], tmp_path / "bench.csv")
    assert two["scaling_efficiency"] == pytest.approx(0.9) and "scaling_efficiency" not in other
    assert "1 of 2 rows" in note
    assert "unavailable" in bench.add_scaling([other], tmp_path / "missing.csv")


def test_time_steps_counts_every_step():
    n = []
    runs, per_step, warmup_s = bench.time_steps(lambda: n.append(1), steps=3, warmup=2, repeats=2,
                                                device=torch.device("cpu"))
    assert len(n) == 8 and len(runs) == 2 and len(per_step) == 6 and warmup_s >= 0
    assert math.isclose(sum(runs), sum(per_step))
