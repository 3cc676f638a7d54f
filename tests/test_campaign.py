"""The GPU campaign (harness.campaign): the budget's decisions as pure functions, the plan of one 15-minute
allocation on an H100 and an H200, the CLI's flags and errors, the report from partial outputs and from
calls with different data, the commit of a copy without .git, the documented commands (parsed, and the
call-1 command run at smoke size and stopped part-way), and one real smoke=true run of every step (slow)."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import REPO, run_harness
from harness.campaign import CampaignConfig, command, default_out, gpu_key, main, plan_text, registered_models, slug
from harness.campaign.budget import Budget, Estimate, plan
from harness.campaign.report import to_markdown
from harness.campaign.steps import CALLS, GPUS, KILL_AFTER_S, STEPS, by_name
from harness.cli import parse_args
from harness.config import ConfigError
from harness.errors import UserError

DOC = REPO / "docs" / "benchmarks" / "campaign.md"
DEV_NOTE = REPO / "docs" / "dev" / "gpu-allocation.md"


# ---- budget -----------------------------------------------------------------------------------------


def test_a_step_that_does_not_fit_is_skipped_and_later_ones_that_fit_still_run():
    b = Budget(budget_s=100, reserve_s=10)
    big, small = b.decide(Estimate(start_s=20, compile_s=50, run_s=50)), b.decide(Estimate(run_s=60))
    assert not big.run and big.timeout_s == 0
    assert big.reason == "estimated 120 s, 90 s left"
    assert small.run and small.reason == ""


def test_only_the_run_part_is_rescaled_by_what_was_measured():
    b = Budget(budget_s=10_000)
    step = Estimate(start_s=10, compile_s=40, run_s=100)
    assert b.decide(step).estimate_s == 150  # nothing measured yet: as planned
    b.charge(Estimate(start_s=10, compile_s=40, run_s=50), elapsed_s=150)  # run part took 100 s: 2x
    assert b.scale == pytest.approx(2.0)
    assert b.decide(step).estimate_s == pytest.approx(10 + 40 + 200)  # compile is host-bound: not doubled
    b.charge(Estimate(run_s=150), elapsed_s=100)  # ratio over all steps: 200 / 200
    assert b.decide(step).estimate_s == pytest.approx(150)


def test_a_gpu_faster_than_planned_never_shrinks_estimates_below_half():
    b = Budget(budget_s=10_000)
    b.charge(Estimate(compile_s=60, run_s=100), elapsed_s=61)  # 1 s of run for 100 planned
    assert b.scale == 0.5 and b.decide(Estimate(compile_s=60, run_s=100)).estimate_s == 110


def test_an_over_running_step_is_charged_in_full():
    on_time, late = Budget(budget_s=300), Budget(budget_s=300)
    on_time.charge(Estimate(run_s=100), elapsed_s=100)
    late.charge(Estimate(run_s=100), elapsed_s=200)  # ran over its estimate (or hit its cap)
    assert on_time.left_s == 200 and late.left_s == 100
    assert on_time.decide(Estimate(run_s=80)).run
    after = late.decide(Estimate(run_s=80))  # 80 s x 2 (the overrun's ratio) = 160 s > 100 s left
    assert not after.run and after.estimate_s == pytest.approx(160)


def test_time_between_steps_counts_against_the_budget_but_not_the_ratio():
    b = Budget(budget_s=100)
    b.charge_overhead(30)
    assert b.left_s == 70 and b.scale == 1.0


def test_a_running_step_gets_a_cap_but_never_more_than_the_budget_left():
    b = Budget(budget_s=1000, reserve_s=100, slack=1.5, grace_s=30)
    assert b.decide(Estimate(run_s=10)).timeout_s == 40  # short step: estimate + grace
    assert b.decide(Estimate(run_s=100)).timeout_s == 150  # longer: slack x estimate
    assert b.decide(Estimate(run_s=800)).timeout_s == 900  # capped at what is left


# ---- the plan of one allocation ------------------------------------------------------------------------


@pytest.mark.parametrize("gpu", GPUS)
def test_the_plan_fits_one_allocation(gpu):
    """Call 1 in 240 s, call 2 with the speed recipe at n = 10 in 480 s, the packing and the kill margin
    included; every step of call 1 fits, and call 2's first two."""
    repeats = CampaignConfig().repeats
    assert repeats >= 10
    for number, limit in ((1, 240), (2, 480)):
        call = CALLS[number]
        assert call.limit_s == limit
        assert call.before_s + call.timeout_s + KILL_AFTER_S + call.after_s <= limit
        steps = [s for s in STEPS if s.call == number]
        planned = plan([(s.name, Estimate(s.start_s, s.compile_s, s.run_estimate(gpu, repeats))) for s in steps],
                       call.budget_s, reserve_s=5)
        ran = [p for p in planned if p.decision.run]
        assert sum(p.decision.estimate_s for p in ran) <= call.budget_s - 5
        assert ran[-1].at_s + ran[-1].decision.estimate_s <= call.budget_s - 5
        if number == 1:
            assert [p.name for p in ran] == ["ladder", "data", "ddp"]
        else:
            assert [p.name for p in ran][:2] == ["tta-speed94", "tta-fast-resnet18"]
    speed94 = next(s for s in STEPS if s.name == "tta-speed94")
    assert speed94.run_estimate(gpu, 10) == 10 * speed94.run_s[gpu]  # per run; compile once


def test_compile_estimates_do_not_depend_on_the_gpu_and_unknown_gpus_are_slower():
    for s in STEPS:
        assert set(s.run_s) == set(GPUS)
        assert s.run_estimate("A100") == 2 * s.run_s["H100"] >= s.run_s["H200"]


def test_plan_prints_each_call_and_steps_sets_the_order():
    out = run_harness(["plan=true", "gpu=H200"], module="harness.campaign").stdout
    assert "Plan on H200, speed recipe n=10" in out
    assert f"`timeout -k {KILL_AFTER_S} {CALLS[1].timeout_s}`" in out and f"{CALLS[2].timeout_s}`" in out
    row = next(line for line in out.splitlines() if line.startswith("| tta-speed94 |"))
    assert row.endswith("| yes |")
    assert re.search(r"\| arch-seeds \|.*\| no: estimated \d+ s, \d+ s left \|", out)
    ordered = plan_text("H100", 10, "ddp,ladder")
    assert ordered.index("| ddp |") < ordered.index("| ladder |") and "| data |" not in ordered
    assert [s.name for s in by_name("ddp,ladder")] == ["ddp", "ladder"]
    assert [s.name for s in by_name("", call=1)] == ["ladder", "data", "ddp"]


# ---- CLI ----------------------------------------------------------------------------------------------


def test_flags_are_answered_with_their_key_value_spelling():
    """The one command line (harness/cli.py): --out DIR is out=DIR; --plan and --smoke are refused with the
    spelling that works."""
    assert parse_args(CampaignConfig, ["--out", "runs/x", "call=2", "plan=true"]).out == "runs/x"
    with pytest.raises(ConfigError, match="did you mean plan=true"):
        main(["--plan", "gpu=H200"])
    with pytest.raises(ConfigError, match="did you mean smoke=true"):
        main(["--smoke"])


def test_bad_input_stops_before_anything_runs(tmp_path):
    with pytest.raises(UserError, match="budget_min=-1.0: must be positive"):
        main(["budget_min=-1", "--out", str(tmp_path)])
    with pytest.raises(UserError, match="call=4: one of 1, 2, 3"):
        main(["call=4", f"out={tmp_path}"])
    with pytest.raises(UserError, match="unknown step 'zoo2'"):
        main(["steps=zoo2", f"out={tmp_path}"])
    (tmp_path / "campaign.json").write_text("{}")
    proc = run_harness(["smoke=true", "--out", str(tmp_path)], module="harness.campaign", check=False)
    assert proc.returncode != 0 and "already holds a campaign (campaign.json); continue it with resume=true" in proc.stderr


def test_help_speaks_to_users():
    text = run_harness(["--help"], module="harness.campaign").stdout
    assert "call" in text and "runs/campaign-<gpu>" in text
    for internal in ("device command", "10 minutes", "device_stage", "../shared"):
        assert internal not in text


def test_names_and_default_output():
    assert slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3" and slug("NVIDIA A100-SXM4-40GB") == "a100-sxm4-40gb"
    assert gpu_key("NVIDIA H100 80GB HBM3") == "H100" and gpu_key("h200") == "H200" and gpu_key("NVIDIA H200") == "H200"
    assert gpu_key("NVIDIA GH200 480GB") == "NVIDIA GH200 480GB"  # not an H200's column
    assert default_out({"slug": "h200"}, smoke=False) == Path("runs/campaign-h200")
    assert default_out({"slug": "cpu"}, smoke=True) == Path("runs/campaign-cpu-smoke")


def test_models_missing_from_the_registry_are_dropped_and_named():
    kept, dropped = registered_models("resnet18,no_such_net,vgg*")
    assert kept == "resnet18,vgg*" and dropped == ["no_such_net"]


def test_with_no_time_left_every_step_is_skipped_and_listed(tmp_path):
    # a 6-second budget is under the report's reserve: nothing runs, the report still says what and why
    c = main(["smoke=true", "budget_min=0.1", f"out={tmp_path}"])
    statuses = {s["name"]: s["status"] for s in c["steps"]}
    assert statuses.pop("dali") == "skipped"  # no DALI on a GPU here: said before the time is counted
    assert set(statuses.values()) == {"skipped for time"}
    report = (tmp_path / "report.md").read_text()
    skipped_row = next(line for line in report.splitlines() if line.startswith("| skipped for time |"))
    for name in statuses:
        assert f"{name} (estimated" in skipped_row
    assert json.loads((tmp_path / "campaign.json").read_text())["finished"] is True


def _term_self(*args, **kw):
    os.kill(os.getpid(), signal.SIGTERM)  # as `timeout` at its limit: the handler runs right here


def test_a_signal_during_set_up_exits_143_without_a_traceback(tmp_path, monkeypatch, capsys):
    """Before the call's record exists: one line, 128 + 15, nothing written. After it (the tiny CIFAR-10
    being written): the call is recorded as stopped, its steps 'not reached', the temporary data removed."""
    import harness.campaign as campaign

    monkeypatch.setattr(campaign, "describe_device", _term_self)
    with pytest.raises(SystemExit) as e:
        main(["smoke=true", f"out={tmp_path / 'a'}"])
    assert e.value.code == 143 and "while setting up: nothing measured" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    monkeypatch.undo()
    made = []
    monkeypatch.setattr(campaign, "tiny_cifar", lambda root: (made.append(root), _term_self()))
    (tmp_path / "b" / "zoo").mkdir(parents=True)  # a figure already there: a stopped call's report flags it too
    (tmp_path / "b" / "zoo" / "bench.json").write_text(json.dumps({"rows": [
        {"model": "resnet18", "mode": "train", "batch_size": 512, "images_per_s": 1e6, "mfu": 2.5, "peak_source": "table"}]}))
    with pytest.raises(SystemExit) as e:
        main(["smoke=true", "steps=ddp,ladder", f"out={tmp_path / 'b'}"])
    assert e.value.code == 143 and made and not made[0].exists()
    assert "FLAGGED zoo resnet18 train b512: impossible: MFU 250%" in capsys.readouterr().err
    c = json.loads((tmp_path / "b" / "campaign.json").read_text())
    assert c["calls"][-1]["status"] == "stopped by signal 15"
    assert {s["name"]: s["status"] for s in c["steps"] if s["status"] != "not selected"} == {
        "ladder": "not reached", "ddp": "not reached"}
    assert "PARTIAL: call 1 stopped by a signal" in (tmp_path / "b" / "report.md").read_text()


def test_a_second_signal_while_the_step_ends_is_noted_not_raised(tmp_path, monkeypatch):
    """The step's process sends the first SIGTERM (the campaign's own handler raises Stopped); another
    arrives while end_group waits: the group is still ended and the step's record filled in."""
    import harness.campaign as campaign

    ended = []

    def end_group_twice(proc, grace_s):
        _term_self()  # the second signal
        campaign_end_group(proc, grace_s)
        ended.append(proc.returncode)

    campaign_end_group = campaign.end_group
    monkeypatch.setattr(campaign, "end_group", end_group_twice)
    step = by_name("ddp")[0]
    rec = campaign.record(step, Estimate(run_s=1), ["python"], "")
    (tmp_path / "logs").mkdir()
    child = [sys.executable, "-c", "import os, signal, time; os.kill(os.getppid(), signal.SIGTERM); time.sleep(60)"]
    handlers = {s: signal.signal(s, campaign._raise_stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with pytest.raises(campaign.Stopped):
            campaign.run_step(step, rec, tmp_path, child, 60, dict(os.environ))
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert ended == [-signal.SIGTERM] and rec["status"].startswith("stopped by signal 15 after ")


def test_a_step_run_again_keeps_every_earlier_attempt_and_the_report_shows_the_last_with_figures(tmp_path):
    """Call 1 measured the ladder, call 2's re-run was cut before writing, call 3 runs it again: both earlier
    attempts are kept, and the report shows call 1's rows, saying so."""
    import harness.campaign as campaign
    from harness import tables

    rows = [{"model": "resnet18", "rung": "baseline (seed 001)", "images_per_s": 5000.0, "speedup_step": 1.0,
             "speedup_total": 1.0}]
    (tmp_path / "ladder").mkdir()
    (tmp_path / "logs").mkdir()
    tables.write_csv(tmp_path / "ladder" / "bench.csv", rows, list(rows[0]))
    step = by_name("ladder")[0]
    nothing = [sys.executable, "-c", "pass"]
    for call in (1, 2):
        rec = campaign.record(step, Estimate(run_s=1), nothing, "")
        campaign.run_step(step, rec, tmp_path, nothing, 60, dict(os.environ), attempt_of=call)
    assert (tmp_path / "ladder.previous-1" / "bench.csv").is_file() and (tmp_path / "ladder.previous-2").is_dir()
    assert rec["status"] == "failed (no ladder/bench.json)"
    md = to_markdown(tmp_path, _campaign([{}, {}, {"status": "done"}], [_step("ladder", status=rec["status"],
                                                                                measured_in_call=3)]))
    assert "| resnet18 | baseline (seed 001) | 5,000 |" in md
    assert "its figures are call 1's attempt (ladder.previous-1)" in md
    assert "[bench.csv](ladder.previous-1/bench.csv)" in md and "Earlier attempts: ladder from call 1" in md
    assert "Cut short: ladder stopped before writing bench.json" in md


def test_time_to_accuracy_is_not_run_on_random_images(tmp_path):
    c = main(["steps=tta-speed94,tta-fast-resnet18", f"data.root={tmp_path / 'no-data'}",
              f"out={tmp_path / 'out'}"])
    tta = [s for s in c["steps"] if s["group"] == 4]
    assert [s["status"] for s in tta] == ["skipped", "skipped"] and "no CIFAR-10 under" in tta[0]["reason"]
    assert not (tmp_path / "out" / "tta-speed94").exists()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "time to accuracy on random images means nothing" in report and "device_stage" not in report


@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_every_step_command_is_accepted_by_its_tool(step, smoke, tmp_path):
    """The GPU-size commands cannot run here: their keys, values and model names are checked the way the
    tools check them before measuring, so a CLI change shows up here and not on a lent GPU."""
    from harness import config as C
    from harness.bench.specs import BenchConfig, check, ladder_specs, resolve_defaults, sweep_specs
    from harness.cli import parse_known_args

    argv, _ = command(step, {"dir": str(tmp_path), "data_root": "data", "verify": "official", "repeats": 10}, smoke)
    assert argv[1:3] == ["-m", step.module]
    if step.module == "harness.train":
        cfg = parse_args(C.Config, argv[3:])
        assert cfg.run.dir == str(tmp_path) and cfg.run.wandb is False
        assert cfg.train.compile_mode == "default"  # max-autotune would cost minutes per graph
    elif step.module == "harness.sweep":
        from harness.sweep.cli import SweepOptions
        from harness.sweep.spec import expand, load_sweep

        opts, overrides = parse_known_args(SweepOptions, argv[3:], positional="sweep")
        runs = expand(load_sweep(opts.sweep, opts.out), overrides)
        assert opts.out == str(tmp_path) and len(runs) == 69
        C.apply_overrides(C.Config(), overrides)  # every training override is a real key
    else:
        cfg = resolve_defaults(parse_args(BenchConfig, argv[3:]), "cuda")
        check(cfg)
        if cfg.suite == "zoo":
            assert sweep_specs(cfg) + ladder_specs(cfg)
        assert cfg.out == str(tmp_path) and cfg.run.wandb is False


# ---- report -------------------------------------------------------------------------------------------


def _campaign(calls: list[dict], steps: list[dict] | None = None, gpu: bool = True) -> dict:
    return {"device": {"name": "NVIDIA H200" if gpu else "cpu", "gpu": gpu, "count": 1}, "provenance": {},
            "steps": steps or [], "finished": False,
            "calls": [{"command": ["python", "-m", "harness.campaign", f"call={k}"], "call": k, "budget_min": 4,
                       "started_utc": "-", "elapsed_s": 60, **c} for k, c in enumerate(calls, 1)]}


def _step(name: str, **kw) -> dict:
    s = next(x for x in STEPS if x.name == name)
    return {"name": name, "group": s.group, "call": s.call, "status": "ok", "reason": "", "estimate_s": 100,
            "timeout_s": 150, "elapsed_s": 90, "outputs": [f"{name}/{o}" for o in s.outputs], "missing": [],
            "note": "", "settings": "", "log": f"logs/{name}.log", **kw}


def test_the_report_shows_mfu_against_the_datasheet_peak(tmp_path):
    (tmp_path / "zoo").mkdir()
    rows = [{"model": "resnet18", "mode": "train", "batch_size": 512, "precision": "bf16", "compile": False,
             "images_per_s": 30000.0, "step_ms": 17.1, "step_ms_p10": 16.9, "step_ms_p90": 17.5,
             "peak_mem_mb": 5000.0, "mfu": 0.25, "peak_tflops": 989.0, "peak_source": "table"},
            {"model": "vgg16", "mode": "train", "batch_size": 256, "oom_retry_from": 512, "precision": "bf16",
             "compile": False, "images_per_s": 1000.0, "mfu": 0.1, "peak_tflops": 700.0, "peak_source": "measured"}]
    peaks = {"bf16": {"measured_tflops": 700.0, "table_tflops": 989.0, "matmul": "8192^3 bf16"}}
    (tmp_path / "zoo" / "bench.json").write_text(json.dumps({"environment": {"peaks": peaks}, "rows": rows}))
    md = to_markdown(tmp_path, _campaign([{"status": "running"}]))
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
    write(tmp_path, c, plot=None, final=True)
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


def test_the_report_reads_what_a_cut_step_left(tmp_path):
    """A ladder stopped after two rungs has its bench.csv (rewritten after every row) and no bench.json; a
    speed recipe stopped after 3 of 10 runs has a repeats.json of 3: both are in the report."""
    from harness import tables
    from harness.stats import summarize

    (tmp_path / "ladder").mkdir()
    rows = [{"model": "resnet18", "rung": "baseline (seed 001)", "images_per_s": 5000.0, "speedup_step": 1.0,
             "speedup_total": 1.0},
            {"model": "resnet18", "rung": "+bf16", "images_per_s": 9000.0, "speedup_step": 1.8, "speedup_total": 1.8}]
    tables.write_csv(tmp_path / "ladder" / "bench.csv", rows, list(rows[0]))
    (tmp_path / "tta-speed94").mkdir()
    runs = [{"seed": k, "test_acc": 0.94 + k / 1000, "time_s": 3.0 + k / 10} for k in range(3)]
    (tmp_path / "tta-speed94" / "repeats.json").write_text(json.dumps(
        {"n": 3, "n_planned": 10, "complete": False, "runs": runs,
         "test_acc": summarize(r["test_acc"] for r in runs), "time_s": summarize(r["time_s"] for r in runs)}))
    steps = [_step("ladder", status="stopped by signal 15 after 80 s; kept what it wrote",
                   missing=["ladder/bench.json"], measured_in_call=1, data="random images (no CIFAR-10 under data)"),
             _step("tta-speed94", status="cut at its cap after 206 s; kept what it wrote", measured_in_call=2,
                   data="CIFAR-10 from data")]
    md = to_markdown(tmp_path, _campaign([{"status": "stopped by signal 15"}, {"status": "done"}], steps))
    assert "| resnet18 | +bf16 | 9,000 | 1.80 | 1.80 |" in md
    assert "Cut short: 3 of the 10 planned runs finished." in md and "n=3" in md
    assert "PARTIAL: call 1 stopped by a signal" in md
    assert "Cut short: ladder stopped before writing bench.json; these are its rows so far (bench.csv)." in md


def test_the_data_path_keeps_each_steps_rows_apart(tmp_path):
    """The data step (call 1) and the dali step (call 3) both measure torch and synthetic: each row says its
    step, and the plot draws one series per step and backend."""
    from harness.campaign.report import data_series, read

    for step, ratio in (("data", 0.9), ("dali", 0.7)):
        (tmp_path / step).mkdir()
        rows = [{"model": "resnet18", "backend": b, "batch_size": 256, "images_per_s": 1000.0 * r,
                 "vs_synthetic": r} for b, r in (("synthetic", 1.0), ("torch", ratio))]
        (tmp_path / step / "data_bench.json").write_text(json.dumps({"training": rows}))
    md = to_markdown(tmp_path, _campaign([{}]))
    assert re.search(r"\| data \| resnet18 \| torch \| 256 \|", md) and re.search(r"\| dali \| resnet18 \| torch \|", md)
    series = data_series(read(tmp_path).data)
    assert {name: rows["resnet18"]["vs_synthetic"] for name, rows in series.items()} == {
        "synthetic (data step)": 1.0, "torch (data step)": 0.9, "synthetic (dali step)": 1.0, "torch (dali step)": 0.7}


def test_the_title_and_status_say_what_the_campaign_is(tmp_path):
    """A smoke run on a GPU is no campaign's figures; a steps= subset is complete for those steps only."""
    from harness.campaign.report import state, title

    assert title(_campaign([{}])) == "# Campaign on NVIDIA H200"
    assert title({**_campaign([{}]), "smoke": True}) == "# Campaign smoke run on NVIDIA H200: toy sizes, not a measurement"
    assert title({**_campaign([{}], gpu=False), "smoke": True}).endswith(": CPU, not a GPU measurement")
    steps = [_step("ddp"), _step("ladder", status="not selected", reason="steps=ddp")]
    subset = {**_campaign([{"status": "done"}], steps), "config": {"steps": "ddp"}}
    assert state(subset) == "complete for steps=ddp only; not selected: ladder"
    assert state({**subset, "finished": True}) == "complete"


def test_each_step_says_which_call_measured_it_and_on_what_data(tmp_path):
    """Call 1 ran on random images, call 2 on CIFAR-10: the header lists both, and each step's row carries
    its own call's data, not the first call's."""
    steps = [_step("ladder", measured_in_call=1, data="random images (no CIFAR-10 under data)"),
             _step("tta-speed94", measured_in_call=2, data="CIFAR-10 from data")]
    md = to_markdown(tmp_path, _campaign([{"data": "random images (no CIFAR-10 under data)", "git_sha": "abc"},
                                          {"data": "CIFAR-10 from data", "git_sha": "abc (from .harness-commit)"}],
                                         steps))
    assert re.search(r"\| call 1 \(call=1\) \|.*data: random images \(no CIFAR-10 under data\); git abc \|", md)
    assert re.search(r"\| call 2 \(call=2\) \|.*data: CIFAR-10 from data; git abc \(from \.harness-commit\) \|", md)
    assert re.search(r"\| 2\. ladder \| ok \| 1 \| random images \|", md)
    assert re.search(r"\| 4\. tta-speed94 \| ok \| 2 \| CIFAR-10 \|", md)


# ---- the commit of a copy without .git ----------------------------------------------------------------


def test_a_copy_without_git_takes_its_commit_from_the_file_written_beside_it(tmp_path, monkeypatch):
    from harness import provenance

    here = provenance.git_sha()
    assert here and "from" not in here  # this checkout: git itself
    monkeypatch.setattr(provenance, "REPO", tmp_path)  # a copy: no .git at or above it
    monkeypatch.setattr(provenance, "COMMIT_FILE", tmp_path / ".harness-commit")
    assert provenance.git_sha() is None
    (tmp_path / ".harness-commit").write_text(here + "\n")
    assert provenance.git_sha() == f"{here} (from .harness-commit)"
    ignored = subprocess.run(["git", "check-ignore", ".harness-commit"], cwd=REPO, capture_output=True, text=True)
    assert ignored.returncode == 0  # never committed, never makes the tree dirty


# ---- the documented commands ------------------------------------------------------------------------------


def _call_lines(text: str) -> list[str]:
    """Every command line of a page that runs a campaign call under `timeout`: a line of a code block, or
    a table cell between backticks."""
    return re.findall(r"(?:^|`)((?:source \S+ && )?timeout -k \d+ \d+ python3 -m harness\.campaign [^`\n]*)", text,
                      flags=re.M)


def _check_call_line(line: str) -> int:
    """`[source ... &&] timeout -k K T python3 -m harness.campaign call=N ...; tar czf F -C runs campaign`:
    the plan's K and T for call N, arguments the campaign accepts, packing after `;`."""
    run, sep, pack = line.partition("; ")
    assert sep and pack.startswith("tar czf ") and pack.endswith(" -C runs campaign")
    words = shlex.split(run.split("&& ")[-1])
    assert words[:3] == ["timeout", "-k", str(KILL_AFTER_S)] and words[4:7] == ["python3", "-m", "harness.campaign"]
    cfg = parse_args(CampaignConfig, words[7:])
    assert cfg.call in CALLS and int(words[3]) == CALLS[cfg.call].timeout_s
    assert cfg.out == "runs/campaign" and cfg.resume == (cfg.call > 1)
    return cfg.call


def test_the_documented_commands_match_the_plan():
    user, dev = DOC.read_text(), DEV_NOTE.read_text()
    assert sorted(_check_call_line(line) for line in _call_lines(user)) == [1, 2]
    assert sorted(_check_call_line(line) for line in _call_lines(dev)) == [1, 2, 3]
    # the user's page names no tool of this repository's own development
    for internal in ("device_stage", "../shared", "$OUT", "files_at", "device tool"):
        assert internal not in user
    assert "python -m harness.campaign smoke=true out=docs/benchmarks/cpu-smoke" in user


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_the_documented_call_stopped_part_way_still_packs_a_readable_report(tmp_path):
    """The user page's call-1 command at smoke size: `timeout` is told to stop it (SIGTERM, as at its
    limit) once the first step has finished. The running step is ended, the report says what finished
    and where it stopped, and the `;` still packs it."""
    line = next(x for x in _call_lines(DOC.read_text()) if "call=1" in x)
    line = (line.replace("python3", shlex.quote(sys.executable)).replace("call=1", "call=1 smoke=true")
            .replace("out=runs/campaign", f"out={tmp_path / 'runs' / 'campaign'}")
            .replace("-C runs campaign", f"-C {tmp_path / 'runs'} campaign")
            .replace("tar czf campaign.tgz", f"tar czf {tmp_path / 'campaign.tgz'}"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    shell = subprocess.Popen(["bash", "-c", line], cwd=REPO, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = tmp_path / "runs" / "campaign" / "campaign.json"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            c = json.loads(state.read_text()) if state.exists() else {}
            if any(s["status"] == "ok" for s in c.get("steps", [])):
                break
            time.sleep(0.5)
        else:
            pytest.fail("no step finished in 300 s")
        timeout_cmd = next(p for p in _children(shell.pid)
                           if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"timeout"))
        os.kill(timeout_cmd, signal.SIGTERM)  # what `timeout` itself does at its limit
        output = shell.communicate(timeout=120)[0]
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
    assert shell.returncode == 0, output  # tar's exit code: the packing ran
    with tarfile.open(tmp_path / "campaign.tgz") as tar:
        report = tar.extractfile("campaign/report.md").read().decode()
        c = json.loads(tar.extractfile("campaign/campaign.json").read())
    statuses = {s["name"]: s["status"] for s in c["steps"] if s["call"] == 1}
    assert statuses["ladder"] == "ok" and "| 2. ladder | ok | 1 | tiny generated |" in report
    cut = [s for s in statuses.values() if s.startswith("stopped by signal 15") or s == "not reached"]
    assert cut and set(statuses.values()) <= {"ok", "not reached"} | set(cut), statuses
    assert c["calls"][-1]["status"] == "stopped by signal 15" and "PARTIAL: call 1 stopped by a signal" in report
    assert "## 2. Optimisation ladder" in report and "| lenet5 | baseline (seed 001) |" in report
    leftovers = [p for p in Path("/proc").glob("[0-9]*/cmdline")
                 if str(tmp_path).encode() in (p.read_bytes() if p.exists() else b"")]
    assert not leftovers  # the stopped step's processes are gone


# ---- the real thing, at smoke size ------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_campaign_runs_every_step_and_reports_each(tmp_path):
    out = tmp_path / "campaign"
    proc = run_harness(["smoke=true", "--out", str(out)], module="harness.campaign", timeout=900, check=False)
    c = json.loads((out / "campaign.json").read_text())
    assert proc.returncode == 0, proc.stderr[-3000:] + "\n" + "\n".join(
        f"{s['name']}: {s['status']}\n" + (out / s["log"]).read_text()[-2000:]
        for s in c["steps"] if s["status"] not in ("ok", "skipped"))
    report = (out / "report.md").read_text()
    for step in STEPS:
        if step.needs_dali:
            assert f"| {step.group}. {step.name} | skipped: needs NVIDIA DALI on a GPU" in report
            continue
        assert f"| {step.group}. {step.name} | ok |" in report
        for o in step.outputs:
            assert (out / step.name / o).is_file()
    assert "CPU, not a GPU measurement" in report and "skipped for time | none" in report
    accuracy = report.split("## 6. Accuracy")[1]  # the recipe's run and the sweep's seeds, read from their files
    recipe = json.loads((out / "recipe-convnext" / "summary.json").read_text())
    assert f"{recipe['model']} with modern regularisation" in accuracy and f"top-5 {recipe['test_top5']:.2%}" in accuracy
    assert "| rank | model | n |" in accuracy and "No results" not in accuracy
    for png in ("zoo_images_per_s.png", "ladder.png", "data_ratio.png", "time_to_accuracy.png"):
        assert (out / png).stat().st_size > 0 and f"]({png})" in report
    assert f"-m harness.campaign smoke=true --out {out}`" in report  # the command is recorded
    assert not list(out.rglob("*.safetensors")) and not list(out.rglob("checkpoints"))  # no weights to carry
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) < 4 * 2**20  # one small tarball


def test_a_resumed_campaign_keeps_what_earlier_calls_measured(tmp_path):
    # a campaign is several calls into one directory
    first = main(["smoke=true", "steps=tta-fast-resnet18", f"out={tmp_path}"])
    ran = next(s for s in first["steps"] if s["name"] == "tta-fast-resnet18")
    assert ran["status"] == "ok" and (tmp_path / "tta-fast-resnet18" / "summary.json").is_file()
    assert not list((tmp_path / "tta-fast-resnet18").rglob("*.safetensors"))  # weights pruned: no figures
    with pytest.raises(UserError, match="holds a smoke campaign; resume it with smoke=true"):
        main(["resume=true", f"out={tmp_path}"])
    second = main(["smoke=true", "resume=true", "call=2", "budget_min=0.1", f"out={tmp_path}"])
    statuses = {s["name"]: s["status"] for s in second["steps"]}
    assert statuses.pop("tta-fast-resnet18") == "ok"
    assert statuses["tta-speed94"] == statuses["arch-seeds"] == "skipped for time"
    assert statuses["zoo"] == "waits for call 3"
    assert [s["name"] for s in second["steps"]] == [s.name for s in STEPS]  # campaign order kept
    report = (tmp_path / "report.md").read_text()
    assert "over 2 calls" in report and "| 4. tta-fast-resnet18 | ok | 1 |" in report
    assert "resnet18 (configs/fast_resnet18.yaml), one run (n=1: no spread): test accuracy" in report
