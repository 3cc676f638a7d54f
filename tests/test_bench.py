"""The benchmark (harness/bench/) on the CPU with tiny sizes: the zoo CLI end to end once (sweep and ladder
in one process, to pay torch's start-up and the compile once), the data and ddp suites, two gloo processes
agreeing on an out-of-memory retry, user errors, the datasheet peaks, and the pure pieces in-process.
"""
from __future__ import annotations

import csv
import json
import math
import sys
import types

import pytest
import torch

from conftest import REPO, make_cifar, run_harness
from harness.bench import measure as M
from harness.bench import outputs, peaks, specs
from harness.bench.specs import BenchConfig, Spec
from harness.data.loaders import dali_available
from harness.errors import UserError
from harness.models import model_facts
from harness.timing import time_steps

FAST = ["steps=2", "warmup=1", "repeats=1", "run.progress=false"]


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    """One real run: a synthetic-data sweep (2 models x fp32/bf16 x train/infer, eager) and the lenet5
    ladder on tiny CIFAR files (DataLoader with 1 worker, compile on, 'torch' data; DALI skipped on CPU)."""
    root = tmp_path_factory.mktemp("bench")
    data = make_cifar(root / "data", "bin", n_train=128, n_test=16)
    out = root / "out"
    proc = run_harness(["model.name=simple_cnn,lenet5", "batch_sizes=8", "precision=fp32,bf16", "mode=both",
                        "compile=false", "channels_last=false", "data.backend=synthetic", "ladder=lenet5",
                        "ladder_batch_size=8", "num_workers=1", f"data.root={data}", f"out={out}", "run.wandb=true",
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
    assert any("harness.bench" in c or c.endswith("bench/__main__.py") for c in env["provenance"]["command"])
    assert len(result["rows"]) == 8 + len(specs.RUNGS)
    assert env["threads"] == 1 and env["launcher"] == "python"  # 1 thread per process on a CPU, recorded
    assert env["provenance"]["threads"]["torch_threads"] == 1 and env["provenance"]["threads"]["OMP_NUM_THREADS"] == "1"
    assert env["provenance"]["launcher"] == "python"


def test_sweep_rows_are_sane(bench_out):
    _, rows, _ = bench_out
    for c in ("model", "batch_size", "precision", "channels_last", "compile", "data", "mode", "images_per_s",
              "step_ms", "params", "gflops", "peak_mem_mb", "tflops", "mfu", "device", "world_size", "step_ms_p10",
              "step_ms_p90", "peak_tflops", "peak_source", "oom_retry_from", "per_device_images_per_s",
              "scaling_efficiency", "images_per_s_n", "images_per_s_low", "images_per_s_high", "spread", "flags",
              "threads", "launcher"):
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
        assert r["threads"] == "1" and r["launcher"] == "python"  # every row: the thread count and launcher
        assert int(r["images_per_s_n"]) == 1  # FAST: one round
        assert float(r["images_per_s_low"]) == float(r["images_per_s"]) == float(r["images_per_s_high"])


def test_ladder_runs_cpu_rungs_and_skips_dali(bench_out):
    _, rows, _ = bench_out
    ladder = {r["rung"]: r for r in rows if r["rung"]}
    assert list(ladder) == [name for name, *_ in specs.RUNGS]
    base = ladder["baseline (seed 001)"]
    # seed 001's loop: fp32, NCHW, eager, its DataLoader, a synchronous copy and its own SGD
    assert (base["precision"], base["channels_last"], base["compile"], base["data"], base["overlap"],
            base["fused"]) == ("fp32", "False", "False", "loader", "False", "False")
    # each rung changes one thing
    keys = ("precision", "channels_last", "compile", "data", "overlap", "fused")
    rungs = list(ladder.values())
    for before, after in zip(rungs, rungs[1:]):
        assert sum(before[k] != after[k] for k in keys) == 1, (before["rung"], after["rung"])
    assert ladder["+compile"]["compile"] == "True" and ladder["+GPU-resident data (GPU gather)"]["data"] == "torch"
    for name in ("baseline (seed 001)", "+overlapped copy", "+fused SGD", "+bf16", "+channels_last", "+compile",
                 "+GPU-resident data (GPU gather)"):
        r = ladder[name]
        assert r["error"] == "" and float(r["images_per_s"]) > 0, (name, r["error"])
        assert float(r["speedup_total"]) == pytest.approx(float(r["images_per_s"]) / float(base["images_per_s"]))
    assert float(base["speedup_step"]) == 1.0
    bf16 = ladder["+bf16"]  # every speed-up written with n and its spread, the step's as the total's
    assert bf16["speedup_step_n"] == "1" and bf16["speedup_step_low"] == bf16["speedup_step_high"] != ""
    assert bf16["flags"].count("too few: speed-up from a single measurement") == 1
    dali = ladder["DALI-rendered batches (device gather + DALI ops)"]
    assert "no GPU" in dali["skip_reason"] and dali["images_per_s"] == "" and dali["data"] == "dali"


@pytest.mark.parametrize("args, message", [
    (["model.name=resnet18,not_a_model"], "unknown model 'not_a_model'"),
    (["batch_size=8"], "unknown config key 'batch_size'"),
])
def test_bad_input_is_one_clear_line(args, message):
    proc = run_harness(args + FAST, module="harness.bench", check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_oom_halves_the_batch_and_records_it(monkeypatch):
    """build() is replaced by one that runs out of memory above 2 images: the row says it retried."""
    calls = []

    def fake_build(spec, batch_size, ctx):
        calls.append(batch_size)
        if batch_size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return M.Variant(spec, batch_size, step=lambda: None, close=lambda: None)

    monkeypatch.setattr(M, "build", fake_build)
    cfg = specs.resolve_defaults(BenchConfig(steps=2, warmup=1, repeats=3), "cpu")
    ctx = M.Context(cfg, types.SimpleNamespace(reduce=lambda t, op: t), torch.device("cpu"),
                    0, 1, {"bf16": (10.0, "table", 20.0)}, "test device")
    [row] = M.measure_group([Spec("lenet5", 8, "bf16", True, False, "synthetic", "train")], ctx)
    assert calls == [8, 4, 2]
    assert row["batch_size"] == 2 and row["oom_retry_from"] == 8 and row["images_per_s_n"] == 3
    assert row["mfu"] == pytest.approx(row["images_per_s"] * 3 * model_facts("lenet5")["gflops"] / 1e3 / 10.0)
    assert row["peak_source"] == "table" and row["achievable_tflops"] == 20.0
    assert row["mfu_achievable"] == pytest.approx(row["mfu"] / 2)  # the measured ceiling: half the datasheet


def _ctx(cfg, peaks=("fp32", "bf16")):
    return M.Context(cfg, None, torch.device("cpu"), 0, 1, {p: (1.0, "measured", 1.0) for p in peaks}, "cpu")


def test_an_out_of_memory_in_warm_up_halves_the_batch(monkeypatch):
    """The first steps fit, warm-up runs out of memory above 2 images: the row retries at half the batch
    (warm-up is inside the retry loop), never 'out of memory even at batch size 1'."""
    calls, closed = [], []

    def fake_build(spec, batch_size, ctx):
        calls.append(batch_size)

        def step():
            if batch_size > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated, in warm-up)")
        return M.Variant(spec, batch_size, step=step, close=lambda: closed.append(batch_size))

    monkeypatch.setattr(M, "build", fake_build)
    cfg = specs.resolve_defaults(BenchConfig(steps=2, warmup=1, repeats=2), "cpu")
    [row] = M.measure_group([Spec("lenet5", 8, "bf16", True, False, "synthetic", "train")], _ctx(cfg))
    assert calls == [8, 4, 2] and closed == [8, 4, 2]  # each failed attempt closed, then the kept one at the end
    assert not row.get("error") and row["batch_size"] == 2 and row["oom_retry_from"] == 8


def test_each_block_starts_after_its_sources_queue_is_drained(monkeypatch):
    """A row whose source renders 3 batches ahead runs 3 steps untimed before each of its timed blocks:
    its queue filled while the other row ran, and the block must not start with free batches."""
    from harness.bench.sources import queue_depth

    assert (queue_depth("loader", 2, 5), queue_depth("dali", 2, 5), queue_depth("torch", 2, 5),
            queue_depth("synthetic", 2, 5), queue_depth("loader", 0, 5)) == (4, 5, 0, 0, 0)
    order = []

    def fake_build(spec, batch_size, ctx):
        return M.Variant(spec, batch_size, step=lambda: order.append(spec.data), close=lambda: None,
                         queue=3 if spec.data == "loader" else 0)

    monkeypatch.setattr(M, "build", fake_build)
    cfg = specs.resolve_defaults(BenchConfig(steps=2, warmup=1, repeats=2), "cpu")
    group = [Spec("lenet5", 8, "fp32", False, False, d, "train", rung=d) for d in ("loader", "torch")]
    rows = M.measure_group(group, _ctx(cfg))
    assert "".join(x[0] for x in order[2:]) == "lllll" "tt" "tt" "lllll"  # round 1: loader, torch; round 2 reversed
    assert [r["images_per_s_n"] for r in rows] == [2, 2]


def test_a_rows_peak_memory_is_its_own_though_its_group_is_in_memory(monkeypatch):
    """Two rows of one group live together: each holds 100 MB and its steps reach 10 MB more. Each row's
    peak is its own 110 MB, not the device's 210 MB."""
    from harness import provenance

    device = {"allocated": 0.0}

    def fake_build(spec, batch_size, ctx):
        device["allocated"] += 100.0
        return M.Variant(spec, batch_size, step=lambda: None, close=lambda: None)

    monkeypatch.setattr(M, "build", fake_build)
    monkeypatch.setattr(M, "allocated_mb", lambda d: device["allocated"])
    monkeypatch.setattr(provenance, "peak_memory_mb", lambda d: device["allocated"] + 10.0)
    cfg = specs.resolve_defaults(BenchConfig(steps=2, warmup=1, repeats=2), "cpu")
    group = [Spec("lenet5", 8, p, False, False, "synthetic", "train") for p in ("fp32", "bf16")]
    assert [r["peak_mem_mb"] for r in M.measure_group(group, _ctx(cfg))] == [110.0, 110.0]


def test_compared_rows_that_end_at_different_batch_sizes_are_flagged_unlike(monkeypatch):
    """bf16 fits 8 images, fp32 runs out of memory above 4: the precisions no longer compare like with like."""
    def fake_build(spec, batch_size, ctx):
        if spec.precision == "fp32" and batch_size > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return M.Variant(spec, batch_size, step=lambda: None, close=lambda: None)

    monkeypatch.setattr(M, "build", fake_build)
    cfg = specs.resolve_defaults(BenchConfig(steps=2, warmup=1, repeats=2), "cpu")
    alone = [Spec("simple_cnn", 8, "bf16", False, False, "synthetic", "train")]  # another comparison: no flag
    group = [Spec("lenet5", 8, p, False, False, "synthetic", "train") for p in ("fp32", "bf16")]
    fp32, bf16, other = M.measure_group(group + alone, _ctx(cfg))
    assert (fp32["batch_size"], bf16["batch_size"]) == (4, 8)
    for r in (fp32, bf16):
        assert "unlike: batch size differs: 4 (fp32), 8 (bf16)" in r["flags"]
    assert not any(f.startswith("unlike") for f in other["flags"])


def test_a_ladder_speed_up_is_flagged_once_however_often_it_is_derived():
    """The zoo derives speed-ups after every group: three passes over one-round rungs flag each rung once."""
    rows = [{"model": "m", "rung": r, "images_per_s": v, "rounds_images_per_s": [v], "flags": []}
            for r, v in (("baseline", 100.0), ("+bf16", 180.0), ("+compile", 250.0))]
    for _ in range(3):
        M.add_speedups(rows)
    assert [len(r["flags"]) for r in rows] == [0, 1, 1]
    assert rows[2]["speedup_step_n"] == 1 and rows[2]["speedup_step"] == pytest.approx(250 / 180)


def test_speed_ups_and_ratios_are_written_with_n_and_the_spread_named_by_n():
    ten = {"speedup_step": 1.5, "speedup_step_n": 10, "speedup_step_low": 1.4, "speedup_step_high": 1.6}
    assert outputs.speedup(ten, "speedup_step") == "1.50 (n=10, p10–p90 1.40–1.60)"
    three = {"vs_synthetic": "0.90", "vs_synthetic_n": "3", "vs_synthetic_low": "0.80", "vs_synthetic_high": "0.90"}
    assert outputs.speedup(three, "vs_synthetic") == "0.90 (n=3, min–max 0.80–0.90)"  # CSV text alike
    one = {"speedup_total": 1.8, "speedup_total_n": 1, "speedup_total_low": 1.8, "speedup_total_high": 1.8}
    assert outputs.speedup(one, "speedup_total") == "1.80 (n=1)"
    for c in ("speedup_step_n", "speedup_step_low", "speedup_step_high", "latency_ms_p50_n",
              "scaling_efficiency_n", "scaling_efficiency_low"):
        assert c in outputs.COLUMNS, c


def test_compared_rows_alternate_round_by_round(monkeypatch):
    """Two rows of one group: each round times one block of each, the order reversed every other round."""
    order = []

    def fake_build(spec, batch_size, ctx):
        return M.Variant(spec, batch_size, step=lambda: order.append(spec.precision), close=lambda: None)

    monkeypatch.setattr(M, "build", fake_build)
    cfg = specs.resolve_defaults(BenchConfig(steps=2, warmup=1, repeats=3), "cpu")
    ctx = M.Context(cfg, None, torch.device("cpu"), 0, 1, {p: (1.0, "measured", 1.0) for p in ("fp32", "bf16")}, "cpu")
    group = [Spec("lenet5", 8, p, False, False, "synthetic", "train") for p in ("fp32", "bf16")]
    assert specs.group_specs(group) == [group]
    rows = M.measure_group(group, ctx)
    timed = order[2:]  # after one warm-up step each
    blocks = [timed[i] for i in range(0, len(timed), 2)]
    assert blocks == ["fp32", "bf16", "bf16", "fp32", "fp32", "bf16"]
    assert [r["images_per_s_n"] for r in rows] == [3, 3] and all(len(r["rounds_images_per_s"]) == 3 for r in rows)


def test_a_rows_precision_is_its_own_whatever_the_launcher_says(monkeypatch):
    """Under ACCELERATE_MIXED_PRECISION=bf16 (what `accelerate launch --mixed_precision bf16` exports) an
    Accelerator that follows the launcher runs an fp32 row's convolutions in bf16; the bench's does not."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from harness.models import create_model
    from harness.training.step import train_step

    def conv_dtypes(accelerator, precision):
        model = accelerator.prepare(create_model("lenet5"))
        seen = []
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda mod, inputs, output: seen.append(output.dtype))
        train_step(model, torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), accelerator,
                   autocast=M.row_autocast(precision, torch.device("cpu")))
        return seen

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    try:
        AcceleratorState._reset_state(True)
        assert conv_dtypes(Accelerator(cpu=True), "fp32") == [torch.bfloat16]  # the bug this guards against
        AcceleratorState._reset_state(True)
        bench = M.make_accelerator()
        assert bench.mixed_precision == "no"
        assert conv_dtypes(bench, "fp32") == [torch.float32]
        assert conv_dtypes(bench, "bf16") == [torch.bfloat16]
    finally:
        AcceleratorState._reset_state(True)


@pytest.mark.parametrize("name, bf16, fp32", [  # names as torch.cuda.get_device_name prints them
    ("NVIDIA H100 80GB HBM3", 989, 494),
    ("NVIDIA H100 PCIe", 756, 378),
    ("NVIDIA H100 NVL", 835, 418),
    ("NVIDIA H200", 989, 494),
    ("NVIDIA GH200 480GB", 989, 494),
    ("NVIDIA A100-SXM4-80GB", 312, 156),
    ("NVIDIA A100-SXM4-40GB", 312, 156),
    ("NVIDIA A100-PCIE-40GB", 312, 156),
    ("NVIDIA A100 80GB PCIe", 312, 156),
    ("NVIDIA L40S", 362, 183),
    ("NVIDIA L40", 181, 90.5),
    ("NVIDIA L4", 121, 60),
    ("NVIDIA A10", 125, 62.5),
    ("NVIDIA A40", 150, 75),
    ("Tesla V100-SXM2-32GB", None, 15.7),
    ("Tesla V100-PCIE-16GB", None, 14.0),
    ("Tesla T4", None, 8.1),
    ("NVIDIA GeForce RTX 4090", 165, 82.6),
])
def test_datasheet_peaks_by_device_name(name, bf16, fp32):
    assert peaks.peak_from_table(name, "bf16") == bf16
    assert peaks.peak_from_table(name, "fp32") == fp32


def test_unlisted_devices_fall_back_to_the_measured_peak():
    """A CPU, an unlisted GPU (no partial-word match: an RTX A4000 is not an A40), or a GPU without bf16
    tensor cores: MFU is against the measured matmul, and the row says so."""
    for name in ("cpu (x86_64, 2 cores)", "NVIDIA RTX A4000", "NVIDIA GeForce GTX 1080"):
        assert peaks.peak_from_table(name, "bf16") is None, name
    fake = lambda device, p: {"bf16": 50.0, "fp32": 20.0}[p]  # noqa: E731
    used, seen = peaks.device_peaks({"bf16", "fp32"}, torch.device("cpu"), "Tesla T4", "table", measure=fake)
    assert used == {"bf16": (50.0, "measured", 50.0), "fp32": (8.1, "table", 20.0)}
    assert seen["bf16"]["table_tflops"] is None and seen["fp32"]["measured_tflops"] == 20.0
    used, _ = peaks.device_peaks({"bf16"}, torch.device("cpu"), "NVIDIA H100 80GB HBM3", "measured", measure=fake)
    assert used == {"bf16": (50.0, "measured", 50.0)}  # peak=measured: the old convention, on request
    assert "not in the datasheet table" in outputs.note({"mfu": 0.1, "peak_source": "measured"})
    assert outputs.note({"mfu": 0.1, "peak_source": "table"}) == ""


def test_parsing_and_suite_defaults():
    assert specs.resolve_models("lenet5,resnet1*,lenet5", "model.name") == ["lenet5", "resnet18"]
    with pytest.raises(UserError, match="no model matches 'zz\\*'"):
        specs.resolve_models("zz*", "model.name")
    assert specs.parse_ints("8, 16", "batch_sizes") == [8, 16]
    with pytest.raises(UserError, match="batch_sizes"):
        specs.parse_ints("8,x", "batch_sizes")
    with pytest.raises(UserError, match="precision"):
        specs.sweep_specs(BenchConfig(precision="fp32,fp16"))
    cpu = specs.resolve_defaults(BenchConfig(suite="data"), "cpu")
    assert (cpu.model.name, cpu.batch_sizes, cpu.compile) == ("simple_cnn", "32", False)  # small on a CPU
    gpu = specs.resolve_defaults(BenchConfig(suite="data"), "cuda")
    assert (gpu.model.name, gpu.batch_sizes) == ("resnet18,simple_cnn", "512")
    zoo = specs.resolve_defaults(BenchConfig(model=specs.BenchModel(""), ladder="lenet5", steps=3, warmup=0), "cpu")
    # compile=auto: off on a CPU, as in training (tests/test_cli.py: one function decides)
    assert (zoo.model.name, zoo.batch_sizes, zoo.steps, zoo.warmup, zoo.repeats, zoo.compile, zoo.rounds) == (
        "", "128", 3, 0, 10, False, "run")  # a CPU: 10 rounds over the whole run (its speed drifts)
    on_gpu = specs.resolve_defaults(BenchConfig(), "cuda")
    assert (on_gpu.steps, on_gpu.repeats, on_gpu.rounds) == (50, 5, "group")


def test_rounds_over_the_run_interleave_every_eager_row_but_keep_compiled_and_ladder_groups():
    eager = [Spec(m, 8, "bf16", True, False, "synthetic", mode) for m in ("lenet5", "simple_cnn")
             for mode in ("train", "infer")]
    compiled = [Spec("lenet5", 8, p, True, True, "synthetic", "train") for p in ("fp32", "bf16")]
    rungs = [Spec("lenet5", 8, "fp32", False, False, "loader", "train", rung=r) for r in ("a", "b")]
    assert specs.group_specs(eager + compiled + rungs, "run") == [eager, compiled, rungs]
    assert specs.group_specs(eager + compiled + rungs, "group") == [[s] for s in eager] + [compiled, rungs]


def test_scaling_efficiency_against_one_process(tmp_path):
    one = {"model": "lenet5", "batch_size": 8, "precision": "bf16", "channels_last": True, "compile": False,
           "data": "synthetic", "mode": "train", "rung": "", "images_per_s": 1000.0, "world_size": 1}
    outputs.write_csv(tmp_path / "bench.csv", [one])
    two = {**one, "images_per_s": 1800.0, "per_device_images_per_s": 900.0, "world_size": 2}
    other = {**two, "model": "simple_cnn"}
    two["rounds_images_per_s"] = [1700.0, 1800.0, 1900.0]
    note, added = M.add_scaling([two, other], tmp_path / "bench.csv")
    assert two["scaling_efficiency"] == pytest.approx(0.9) and "scaling_efficiency" not in other
    assert (two["scaling_efficiency_n"], two["scaling_efficiency_low"], two["scaling_efficiency_high"]) == \
        pytest.approx((3, 0.85, 0.95))  # each round's per-device rate over the 1-process median
    assert "scaling 90% (n=3, min–max 85–95)" in outputs.note(two)
    assert "1 of 2 rows" in note and added == [(two, two["flags"])]  # the flags it added, to print
    assert "unavailable" in M.add_scaling([other], tmp_path / "missing.csv")[0]


def test_time_steps_counts_every_step():
    n = []
    runs, per_step, warmup_s = time_steps(lambda: n.append(1), steps=3, warmup=2, repeats=2,
                                          device=torch.device("cpu"))
    assert len(n) == 8 and len(runs) == 2 and len(per_step) == 6 and warmup_s >= 0
    assert math.isclose(sum(runs), sum(per_step))


def test_latency_adds_batch_1_figures_to_the_infer_rows(tmp_path):
    out = tmp_path / "out"
    run_harness(["model.name=lenet5", "batch_sizes=8", "compile=false", "latency=true", "run.wandb=false", f"out={out}",
                 *FAST], module="harness.bench")
    rows = json.loads((out / "bench.json").read_text())["rows"]
    infer = next(r for r in rows if r["mode"] == "infer")
    train = next(r for r in rows if r["mode"] == "train")
    assert 0 < infer["latency_ms_p50"] <= infer["latency_ms_p90"]
    assert infer["latency_ms_p50_n"] == 2 and infer["latency_ms_p50_low"] <= infer["latency_ms_p50"]  # 2 steps x 1
    assert "latency_ms_p50" not in train  # next to throughput once per model: on its inference row
    assert "latency b1 ms p50 (n, spread) / p90" in (out / "report.md").read_text() and "(n=2, min–max" in (out / "report.md").read_text()


def test_two_ranks_agree_to_halve_the_batch_when_one_runs_out_of_memory(tmp_path):
    """Rank 1 alone raises torch.OutOfMemoryError at the first step (the test hook); both ranks must retry
    at half the batch together, with matching collectives, and the run must finish."""
    out = tmp_path / "out"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "launch/accelerate/cpu_ddp.yaml"), "--num_processes", "2", "-m", "harness.bench"]
    proc = run_harness(["model.name=lenet5", "batch_sizes=8", "mode=train", "compile=false", "run.wandb=false",
                        f"out={out}", *FAST], launcher=launch, env={M.INJECT_OOM_ENV: "1"}, timeout=240)
    rows = json.loads((out / "bench-world2.json").read_text())["rows"]
    assert len(rows) == 1, proc.stderr[-2000:]
    row = rows[0]
    assert not row.get("error") and not row.get("skip_reason")
    assert row["batch_size"] == 4 and row["oom_retry_from"] == 8 and row["world_size"] == 2
    assert row["images_per_s"] > 0 and row["per_device_images_per_s"] == pytest.approx(row["images_per_s"] / 2)


def test_two_ranks_both_record_one_ranks_block_error_and_finish(tmp_path):
    """Rank 1 alone fails at the end of its first timed block of the row (the test hook, after the block's
    steps and their all-reduces): both ranks must record the error and skip the row's later blocks
    together, so no barrier or all-reduce pairs with another one."""
    out = tmp_path / "out"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "launch/accelerate/cpu_ddp.yaml"), "--num_processes", "2", "-m", "harness.bench"]
    proc = run_harness(["model.name=lenet5", "batch_sizes=4", "mode=train", "compile=false", "run.wandb=false",
                        f"out={out}", "steps=2", "warmup=1", "repeats=3", "run.progress=false"],
                       launcher=launch, env={M.INJECT_ERROR_ENV: "1"}, timeout=240, check=False)
    assert proc.returncode != 0 and "1 of 1 rows failed" in proc.stderr, proc.stderr[-2000:]
    [row] = json.loads((out / "bench-world2.json").read_text())["rows"]
    assert row["error"] == "PeerFailed: another rank failed on this row (see its error)"


def test_data_suite_reports_each_backend_against_synthetic(tmp_path):
    """The data bench is a suite of the one benchmark: training-config key names, random images when the
    files are missing (said so), images/s per backend with n and spread, the ratio to synthetic round by
    round, the thread count and launcher in every row."""
    backends = "torch,dali,synthetic" if dali_available() else "torch,synthetic"
    proc = run_harness(["suite=data", f"backends={backends}", "model.name=simple_cnn", "batch_sizes=8", "steps=2",
                        "warmup=1", "repeats=2", f"data.root={tmp_path / 'no-data'}", "data.limit_train=64",
                        f"out={tmp_path}"], module="harness.bench")
    result = json.loads((tmp_path / "data_bench.json").read_text())
    assert "RANDOM" in result["data"] and "not a GPU measurement" in result["device"]
    assert [r["backend"] for r in result["loaders"]] == backends.split(",")
    for r in result["loaders"] + result["training"]:
        assert r["images_per_s"] > 0 and r["images_per_s_n"] == 2 and len(r["rounds_images_per_s"]) == 2
        assert r["images_per_s_low"] <= r["images_per_s"] <= r["images_per_s_high"]
        assert r["threads"] == 1 and r["launcher"] == "python" and isinstance(r["flags"], list)
    ratio = {r["backend"]: r["vs_synthetic"] for r in result["training"]}
    assert ratio["synthetic"] == 1.0 and ratio["torch"] > 0
    torch_row = next(r for r in result["training"] if r["backend"] == "torch")
    synthetic = next(r for r in result["training"] if r["backend"] == "synthetic")
    rounds = [a / b for a, b in zip(torch_row["rounds_images_per_s"], synthetic["rounds_images_per_s"])]
    assert torch_row["vs_synthetic"] == pytest.approx(sum(rounds) / 2)  # the median of two rounds' ratios
    assert torch_row["vs_synthetic_n"] == 2 and torch_row["step_ms_n"] == 2  # every figure with n and spread
    assert torch_row["step_ms_low"] <= torch_row["step_ms"] <= torch_row["step_ms_high"]
    assert torch_row["compile"] is False  # compile=auto on a CPU: eager, as training runs it
    md = (tmp_path / "data_bench.md").read_text()
    assert md.startswith("# Data-pipeline benchmark") and "vs synthetic" in md and md in proc.stdout
    assert "(n=2, min–max" in md and "vs synthetic (median of the rounds' ratios, n, spread)" in md
    assert "data bench 1/" in proc.stderr  # progress, as plain lines when not on a terminal


def test_the_data_suites_loader_augments_as_training_does():
    """The bench's data.* augmentation keys are training's, read by the one Augment.from_config: a recipe's
    RandAugment, erasing and mixing reach the measured loader, and mixing yields the soft targets a
    training step takes."""
    from dataclasses import fields

    import numpy as np

    from harness.bench.sources import harness_loader
    from harness.config import DataConfig
    from harness.data.loaders import Augment

    options = dict(mixup=0.8, cutmix=1.0, mix_switch_prob=0.3, mix_stop_epoch=5, randaugment="rand-m9-n2",
                   random_erasing=0.25, cutout=8, flip_mode="alternate", pad_mode="reflect", crop_padding=2)
    bench = specs.BenchData(**options)
    assert Augment.from_config(bench) == Augment.from_config(DataConfig(**options))
    for f in fields(Augment):  # every augmentation key has the same default in the bench as in training
        key = Augment.CONFIG_KEYS.get(f.name, f.name)
        assert getattr(specs.BenchData(), key) == getattr(DataConfig(), key), key
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 16).astype(np.int64)
    loader = harness_loader("torch", x, y, 8, train=True, data=bench, device=torch.device("cpu"),
                            channels_last=False)
    assert loader.augment == Augment.from_config(bench)
    images, targets = next(iter(loader))
    assert images.shape == (8, 3, 32, 32) and targets.shape == (8, 10)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert not harness_loader("torch", x, y, 8, train=False, data=bench, device=torch.device("cpu"),
                              channels_last=False).augment.enabled


def test_a_stopped_data_suite_keeps_what_it_measured(tmp_path, monkeypatch):
    """data_bench.json is rewritten after every measurement: stopped during the second model, it holds the
    loaders and the first model's rows."""
    from harness.bench import cli, data_suite

    real, calls = data_suite.timed_rounds, []

    def stop_at_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # loaders, lenet5, then stop
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(data_suite, "timed_rounds", stop_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["suite=data", "backends=torch,synthetic", "model.name=lenet5,simple_cnn", "batch_sizes=4",
                  f"data.root={tmp_path / 'no-data'}", "data.limit_train=32", f"out={tmp_path}", *FAST])
    result = json.loads((tmp_path / "data_bench.json").read_text())
    assert [r["backend"] for r in result["loaders"]] == ["torch", "synthetic"]
    assert {r["model"] for r in result["training"]} == {"lenet5"}


def test_a_stopped_zoo_run_keeps_what_it_measured(tmp_path, monkeypatch):
    """bench.csv and bench.json are rewritten after every group of rows: stopped during the second model,
    both hold the first model's rows (rounds=group: each model its own group, as on a GPU)."""
    from accelerate.state import AcceleratorState

    from harness.bench import cli

    real, calls = M.measure_group, []

    def stop_at_the_second(group, ctx):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(group, ctx)

    monkeypatch.setattr(M, "measure_group", stop_at_the_second)
    try:
        with pytest.raises(KeyboardInterrupt):
            cli.main(["model.name=lenet5,simple_cnn", "batch_sizes=4", "mode=train", "precision=fp32", "compile=false",
                      "rounds=group", "run.wandb=false", f"out={tmp_path}", *FAST])
    finally:
        AcceleratorState._reset_state(True)
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["lenet5"] and rows[0]["images_per_s"] > 0
    with open(tmp_path / "bench.csv", newline="") as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["lenet5"]


def test_ddp_suite_measures_both(tmp_path):
    proc = run_harness(["suite=ddp", "model.name=lenet5", "batch_sizes=4", "steps=2", "repeats=1", "warmup=1",
                        f"out={tmp_path}", "run.progress=false"], module="harness.bench")
    result = json.loads((tmp_path / "ddp_overhead.json").read_text())
    assert result == json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == "gloo" and result["steps_each"] == 2 and result["model"] == "lenet5"
    assert result["plain_round_ms"]["median"] > 0 and result["ddp_round_ms"]["median"] > 0
    assert "plain_step_ms" not in result and "overhead_ms" not in result  # figures without n or spread
    assert result["threads"] == 1 and result["launcher"] == "python" and result["overhead_pct_n"] == 1
    assert "(n=1)" in proc.stdout  # every figure printed with its n


@pytest.mark.parametrize("args, message", [
    (["suite=ddp", "model.name=lenet5,simple_cnn"], "one model at one batch size"),
    (["suite=data", "backends=torch,nvjpeg"], "unknown backend 'nvjpeg'"),
    (["suite=data", "ladder=lenet5"], "ladder= belongs to suite=zoo"),
    (["data_root=data"], "unknown config key 'data_root'"),
])
def test_suite_bad_input_is_one_clear_line(args, message):
    proc = run_harness(args + FAST, module="harness.bench", check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_stability_compares_each_row_across_runs_against_every_runs_spread(tmp_path):
    """Three bench outputs of one benchmark (fabricated rows): a row reproduces when every run's median lies in
    every other run's printed spread; the data suite's real/synthetic ratio is compared the same way."""
    from harness.bench import stability

    def zoo(directory, lenet, cnn):
        directory.mkdir()
        rows = [{"model": m, "mode": "train", "precision": "bf16", "batch_size": 128, "world_size": 1,
                 "images_per_s": med, "images_per_s_low": lo, "images_per_s_high": hi, "images_per_s_n": 10}
                for m, (med, lo, hi) in (("lenet5", lenet), ("simple_cnn", cnn))]
        (directory / "bench.json").write_text(json.dumps({"rows": rows}))
        return str(directory)

    dirs = [zoo(tmp_path / "a", (100, 90, 110), (50, 48, 52)), zoo(tmp_path / "b", (105, 95, 112), (60, 58, 61)),
            zoo(tmp_path / "c", (98, 91, 106), (51, 49, 53))]
    result = stability.main([",".join(dirs), f"out={tmp_path / 'out'}"])
    by_model = {r["identity"]["model"]: r for r in result}
    assert by_model["lenet5"]["reproduced"] and by_model["lenet5"]["max_over_min"] == pytest.approx(105 / 98)
    assert not by_model["simple_cnn"]["reproduced"] and by_model["simple_cnn"]["outside"] == [1, 2, 3]
    text = (tmp_path / "out" / "stability.md").read_text()
    assert "1 of 2 figures reproduced" in text and "no: median of run 1, 2, 3 outside another's spread" in text
    data = tmp_path / "d"
    data.mkdir()
    (data / "data_bench.json").write_text(json.dumps({"loaders": [], "training": [
        {"model": "simple_cnn", "backend": "torch", "batch_size": 32, "images_per_s": 1500, "images_per_s_low": 1400,
         "images_per_s_high": 1600, "images_per_s_n": 7, "vs_synthetic": 0.9, "vs_synthetic_low": 0.8,
         "vs_synthetic_high": 1.0}]}))
    rows = stability.compare([stability.read_rows(data)] * 2)
    assert [(r["figure"], r["reproduced"]) for r in rows] == [("images/s", True), ("x synthetic", True)]
    # each run's own flags travel with the row; runs with other threads or another launcher are not alike
    row = json.loads((data / "data_bench.json").read_text())["training"][0]
    flagged = [{**row, "threads": 1, "launcher": "python", "flags": ["unstable: spread 2.0x"]},
               {**row, "threads": 2, "launcher": "python", "flags": []}]
    [images, ratio] = stability.compare([[{**flagged[0], "suite": "d"}], [{**flagged[1], "suite": "d"}]])
    assert images["flags"] == ["run 1: unstable: spread 2.0x", "unlike: threads differs: 1 (run 1), 2 (run 2)"]
    assert "unlike: threads differs" in stability.to_markdown([images, ratio], ["a", "b"])
    with pytest.raises(UserError, match="at least two"):
        stability.main([dirs[0]])
