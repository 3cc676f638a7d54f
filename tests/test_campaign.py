"""The GPU campaign (harness.campaign): the budget's decisions as pure functions, the CLI's flags and
errors, the report's MFU line from a bench.json, and one real smoke=true run of every step (slow)."""
from __future__ import annotations

import json

import pytest

from conftest import run_harness
from harness.campaign import command, main, registered_models, slug
from harness.campaign.budget import Budget
from harness.campaign.report import to_markdown
from harness.campaign.steps import STEPS
from harness.errors import UserError


# ---- budget -----------------------------------------------------------------------------------------


def test_a_step_that_does_not_fit_is_skipped_and_later_ones_that_fit_still_run():
    b = Budget(budget_s=100, reserve_s=10)
    big, small = b.decide(120), b.decide(60)
    assert not big.run and big.timeout_s == 0
    assert big.reason == "estimated 120 s, 90 s left"
    assert small.run and small.reason == ""


def test_estimates_scale_with_what_was_measured():
    b = Budget(budget_s=10_000)
    assert b.decide(100).estimate_s == 100  # nothing measured yet: the prior
    b.charge(prior_s=50, elapsed_s=100)  # this machine runs at half the reference speed
    assert b.decide(100).estimate_s == pytest.approx(200)
    b.charge(prior_s=150, elapsed_s=100)  # ratio over all steps: 200 / 200
    assert b.decide(100).estimate_s == pytest.approx(100)


def test_an_over_running_step_is_charged_in_full():
    on_time, late = Budget(budget_s=300), Budget(budget_s=300)
    on_time.charge(prior_s=100, elapsed_s=100)
    late.charge(prior_s=100, elapsed_s=200)  # ran over its estimate (or hit its timeout)
    assert on_time.left_s == 200 and late.left_s == 100
    assert on_time.decide(80).run
    after = late.decide(80)  # 80 s x 2 (the overrun's ratio) = 160 s > 100 s left
    assert not after.run and after.estimate_s == pytest.approx(160)


def test_time_between_steps_counts_against_the_budget_but_not_the_scale():
    b = Budget(budget_s=100)
    b.charge_overhead(30)
    assert b.left_s == 70 and b.scale == 1.0


def test_a_running_step_gets_slack_but_never_more_than_the_budget_left():
    b = Budget(budget_s=1000, reserve_s=100, slack=3, grace_s=60)
    assert b.decide(10).timeout_s == 70  # short step: estimate + grace
    assert b.decide(100).timeout_s == 300  # longer: slack x estimate
    assert b.decide(800).timeout_s == 900  # capped at what is left


# ---- CLI ----------------------------------------------------------------------------------------------


def test_bad_input_stops_before_anything_runs(tmp_path):
    with pytest.raises(UserError, match="budget_min=0.0: must be positive"):
        main(["budget_min=0", "--out", str(tmp_path)])
    with pytest.raises(UserError, match="unknown step 'zoo2'"):
        main(["steps=zoo2", f"out={tmp_path}"])
    (tmp_path / "campaign.json").write_text("{}")
    proc = run_harness(["smoke=true", "--out", str(tmp_path)], module="harness.campaign", check=False)
    assert proc.returncode != 0 and "already holds a campaign (campaign.json); continue it with resume=true" in proc.stderr


def test_gpu_names_become_directory_names():
    assert slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert slug("NVIDIA A100-SXM4-40GB") == "a100-sxm4-40gb"


def test_models_missing_from_the_registry_are_dropped_and_named():
    kept, dropped = registered_models("resnet18,no_such_net,vgg*")
    assert kept == "resnet18,vgg*" and dropped == ["no_such_net"]


def test_with_no_time_left_every_step_is_skipped_and_listed(tmp_path):
    # a 6-second budget is under the report's reserve: nothing runs, the report still says what and why
    c = main(["smoke=true", "budget_min=0.1", f"out={tmp_path}"])
    assert [s["status"] for s in c["steps"]] == ["skipped for time"] * len(STEPS)
    report = (tmp_path / "report.md").read_text()
    skipped_row = next(line for line in report.splitlines() if line.startswith("| skipped for time |"))
    for step in STEPS:
        assert f"{step.name} (estimated" in skipped_row
    assert json.loads((tmp_path / "campaign.json").read_text())["finished"] is True


def test_time_to_accuracy_is_not_run_on_random_images(tmp_path):
    c = main(["steps=tta-speed94,tta-fast-resnet18", f"data.root={tmp_path / 'no-data'}",
              f"out={tmp_path / 'out'}"])
    tta = [s for s in c["steps"] if s["group"] == 4]
    assert [s["status"] for s in tta] == ["skipped", "skipped"] and "no CIFAR-10 under" in tta[0]["reason"]
    assert not (tmp_path / "out" / "tta-speed94").exists()
    assert "device_stage.py prepare" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_every_step_command_is_accepted_by_its_tool(step, smoke, tmp_path):
    """The GPU-size commands cannot run here: their keys, values and model names are checked the way the
    tools check them before measuring, so a CLI change shows up here and not on a lent GPU."""
    from harness.bench.specs import BenchConfig, check, ladder_specs, resolve_defaults, sweep_specs
    from harness.cli import parse_args
    from harness.config import Config

    argv, _ = command(step, {"dir": str(tmp_path), "data_root": "data", "verify": "official", "repeats": 5}, smoke)
    assert argv[1:3] == ["-m", step.module]
    if step.module == "harness.train":
        cfg = parse_args(Config, argv[3:])
        assert cfg.run.dir == str(tmp_path) and cfg.run.wandb is False
    else:
        cfg = resolve_defaults(parse_args(BenchConfig, argv[3:]), "cuda")
        check(cfg)
        if cfg.suite == "zoo":
            assert sweep_specs(cfg) + ladder_specs(cfg)
        assert cfg.out == str(tmp_path) and cfg.run.wandb is False


# ---- report -------------------------------------------------------------------------------------------


def test_the_report_shows_mfu_against_the_datasheet_peak(tmp_path):
    (tmp_path / "zoo").mkdir()
    rows = [{"model": "resnet18", "mode": "train", "batch_size": 512, "precision": "bf16", "compile": False,
             "images_per_s": 30000.0, "step_ms": 17.1, "step_ms_p10": 16.9, "step_ms_p90": 17.5,
             "peak_mem_mb": 5000.0, "mfu": 0.25, "peak_tflops": 989.0, "peak_source": "table"},
            {"model": "vgg16", "mode": "train", "batch_size": 256, "oom_retry_from": 512, "precision": "bf16",
             "compile": False, "images_per_s": 1000.0, "mfu": 0.1, "peak_tflops": 700.0, "peak_source": "measured"}]
    peaks = {"bf16": {"measured_tflops": 700.0, "table_tflops": 989.0, "matmul": "8192^3 bf16"}}
    (tmp_path / "zoo" / "bench.json").write_text(json.dumps({"environment": {"peaks": peaks}, "rows": rows}))
    c = {"device": {"name": "NVIDIA H100 80GB HBM3", "gpu": True, "count": 1}, "provenance": {}, "steps": [],
         "calls": [{"command": ["python", "-m", "harness.campaign"], "budget_min": 25, "started_utc": "-",
                    "elapsed_s": 60}], "finished": False}
    md = to_markdown(tmp_path, c)
    assert "bf16: datasheet 989 TFLOP/s, measured matmul 700.0 TFLOP/s (achievable ceiling, 71% of the datasheet)" in md
    line = next(x for x in md.splitlines() if x.startswith("| resnet18 | train"))
    assert "| 25.0% datasheet |" in line and "| 30,000 |" in line
    assert "| 10.0% measured |" in md and "256 (OOM at 512)" in md
    assert "PARTIAL" in md


def test_the_report_carries_spreads_and_flags_and_refuses_intervals_from_two_runs(tmp_path, capsys):
    """Fabricated step outputs: an impossible MFU (re-checked), a data row flagged by its suite, a ddp
    overhead with its rounds, and the speed recipe at n = 2 (the campaign once printed '95% CI -19.62–39.94')."""
    from harness.campaign.report import write

    for d in ("zoo", "data", "ddp", "tta-speed94"):
        (tmp_path / d).mkdir()
    zoo = [{"model": "resnet18", "mode": "train", "batch_size": 512, "precision": "bf16", "compile": False,
            "images_per_s": 300000.0, "images_per_s_n": 3, "images_per_s_low": 290000.0,
            "images_per_s_high": 310000.0, "spread": "min–max", "mfu": 2.5, "peak_tflops": 989.0,
            "peak_source": "table", "flags": []}]
    (tmp_path / "zoo" / "bench.json").write_text(json.dumps({"environment": {}, "rows": zoo}))
    data = [{"model": "simple_cnn", "backend": "torch", "batch_size": 32, "images_per_s": 7.18, "images_per_s_n": 3,
             "images_per_s_low": 6.0, "images_per_s_high": 8.0, "step_ms": 4.0, "vs_synthetic": 1.9,
             "vs_synthetic_low": 1.5, "vs_synthetic_high": 2.2,
             "flags": ["impossible: real data 7.18 images/s > synthetic 3.69 beyond the spread"]}]
    (tmp_path / "data" / "data_bench.json").write_text(json.dumps({"training": data}))
    ddp = {"model": "lenet5", "batch": 8, "backend": "gloo", "threads": 1, "overhead_pct": 15.5, "overhead_pct_n": 2,
           "overhead_pct_low": 8.2, "overhead_pct_high": 22.9, "spread": "min–max", "flags": []}
    (tmp_path / "ddp" / "ddp_overhead.json").write_text(json.dumps(ddp))
    rep = {"test_acc": {"n": 2, "mean": 0.1016, "std": 0.0331, "ci95_low": -0.1962, "ci95_high": 0.3994},
           "runs": [{"seed": 0, "test_acc": 0.0785, "time_s": 1.5}, {"seed": 1, "test_acc": 0.1247, "time_s": 44.0}]}
    (tmp_path / "tta-speed94" / "repeats.json").write_text(json.dumps(rep))
    c = {"device": {"name": "cpu", "gpu": False}, "provenance": {}, "steps": [], "calls": [], "finished": True}
    write(tmp_path, c, plot=None)
    md = (tmp_path / "report.md").read_text()
    assert "impossible: MFU 250% > 100% of the datasheet peak" in md
    assert "300,000 (n=3, min–max 290,000–310,000)" in md
    assert "1.90 (1.50–2.20)" in md and "impossible: real data 7.18" in md
    assert "overhead +15.5% (median of n=2 alternating rounds, min–max +8.2–+22.9%)" in md
    assert "n = 2: too few runs for an interval" in md and "-19.62" not in md and "CI" not in md.split("Speed recipe")[1].split("\n")[0]
    assert "unstable: spread" in md.split("Speed recipe")[1].split("\n")[0]  # 1.5 s and 44 s
    err = capsys.readouterr().err
    assert "FLAGGED zoo resnet18 train b512: impossible: MFU 250%" in err and "FLAGGED data simple_cnn torch" in err
    assert (tmp_path / "data_ratio.png").is_file() and (tmp_path / "zoo_images_per_s.png").is_file()


# ---- the real thing, at smoke size ------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_campaign_runs_every_step_and_reports_each(tmp_path):
    out = tmp_path / "campaign"
    proc = run_harness(["smoke=true", "--out", str(out)], module="harness.campaign", timeout=600, check=False)
    c = json.loads((out / "campaign.json").read_text())
    assert proc.returncode == 0, proc.stderr[-3000:] + "\n" + "\n".join(
        f"{s['name']}: {s['status']}\n" + (out / s["log"]).read_text()[-2000:]
        for s in c["steps"] if s["status"] != "ok")
    report = (out / "report.md").read_text()
    for step in STEPS:
        assert f"| {step.group}. {step.name} | ok |" in report
        for o in step.outputs:
            assert (out / step.name / o).is_file()
    assert "CPU, not a GPU measurement" in report and "skipped for time | none" in report
    for png in ("zoo_images_per_s.png", "ladder.png", "data_ratio.png", "time_to_accuracy.png"):
        assert (out / png).stat().st_size > 0 and f"]({png})" in report
    assert f"-m harness.campaign smoke=true --out {out}`" in report  # the command is recorded


def test_a_resumed_campaign_keeps_what_earlier_calls_measured(tmp_path):
    # one device command may run 10 minutes: a campaign is several calls into one directory
    first = main(["smoke=true", "steps=tta-fast-resnet18", f"out={tmp_path}"])
    ran = next(s for s in first["steps"] if s["name"] == "tta-fast-resnet18")
    assert ran["status"] == "ok" and (tmp_path / "tta-fast-resnet18" / "summary.json").is_file()
    assert not list((tmp_path / "tta-fast-resnet18").rglob("*.safetensors"))  # weights pruned: no figures
    with pytest.raises(UserError, match="holds a smoke campaign; resume it with smoke=true"):
        main(["resume=true", f"out={tmp_path}"])
    second = main(["smoke=true", "resume=true", "budget_min=0.1", f"out={tmp_path}"])
    statuses = {s["name"]: s["status"] for s in second["steps"]}
    assert statuses.pop("tta-fast-resnet18") == "ok"
    assert set(statuses.values()) == {"skipped for time"}
    assert [s["name"] for s in second["steps"]] == [s.name for s in STEPS]  # campaign order kept
    report = (tmp_path / "report.md").read_text()
    assert "over 2 calls" in report and "| 4. tta-fast-resnet18 | ok |" in report
    assert "resnet18 (configs/fast_resnet18.yaml), one run (n=1: no spread): test accuracy" in report
