"""The GPU campaign: every published figure, in priority order, inside a time budget.

    python -m harness.campaign plan=true [gpu=H200]          the plan: steps, estimates, caps, what fits
    python -m harness.campaign call=1 out=DIR                the first command of an allocation
    python -m harness.campaign call=2 out=DIR resume=true    the second, into the same directory
    python -m harness.campaign smoke=true                    every step at toy size on a CPU

This module owns running the campaign: the steps (`steps.STEPS`, grouped into calls) run one after
another in priority order (`steps=` sets another), each as a subprocess of the harness's own CLI
(`python -m harness.bench ...`, `python -m harness.train ...`), so an OOM, a crash or a hang in one step
ends only that step. Before each step the budget (`budget.Budget`) estimates it (start and compile
seconds as planned, run seconds rescaled by what the steps so far took) and skips it, listed with the
reason, when it no longer fits; a step that runs gets a hard cap, and its console output goes to
`logs/<step>.log`. After every step the report (`report.write`) is rewritten from whatever the steps
wrote, and SIGTERM (`timeout`) or Ctrl-C stops the running step, keeps what it wrote and writes the
report before the campaign exits, so a call cut short still leaves a readable report.

smoke=true runs every step at toy size on a CPU (a few minutes; what the tests run). It never reads data/:
it writes a tiny CIFAR-10 in the official binary format to a temporary directory. At full size, the
time-to-accuracy steps need the real CIFAR-10 under data.root and are skipped (and listed) without it;
the benchmarks fall back to random images and say so. Output: runs/campaign-<gpu> unless out= names
another directory (out=docs/benchmarks/<gpu> publishes). Method and budget: docs/benchmarks/campaign.md.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.campaign.budget import Budget, Estimate, plan
from harness.campaign.steps import CALLS, GPUS, KILL_AFTER_S, STEPS, Step, by_name
from harness.cli import parse_args
from harness.config import ConfigError
from harness.errors import UserError

REPO = Path(__file__).resolve().parents[2]
NO_DATA = ("no CIFAR-10 under {data_root} (time to accuracy on random images means nothing): put the "
           "official files there, or set data.root=")
NO_DALI = "needs NVIDIA DALI on a GPU (optional: pip install -e '.[dali]'; docs/benchmarks/campaign.md, call 3)"
USAGE = "python -m harness.campaign [plan=true] [call=1|2|3] [out=DIR] [resume=true] [smoke=true] [key=value ...]"
REPORT_S = 5  # kept back from the budget for the final report's plots
STOP_GRACE_S = 4  # a stopped step's processes get this long to end on SIGTERM (steps.KILL_AFTER_S is 8)


@dataclass
class CampaignData:
    root: str = "data"  # the CIFAR-10 files (the time-to-accuracy steps need them)


@dataclass
class CampaignConfig:
    # which command of the allocation: 1 (no CIFAR-10 needed), 2 (CIFAR-10), 3 (optional, later: DALI, the
    # zoo tables); 0: every step
    call: int = 0
    plan: bool = False  # print the plan (each call's steps, estimated seconds, caps, what fits) and exit
    gpu: str = ""  # plan=true for this GPU (H100, H200; another name: the H100's run times x 2); "": this machine's
    # wall-clock budget in minutes (0: the call's, from the plan: 3.5 min for call=1, 7.3 for call=2, 7.5
    # for call=3; 25 for every step)
    budget_min: float = 0.0
    out: str = ""  # output directory ("": runs/campaign-<gpu>, e.g. runs/campaign-h200; -smoke added)
    smoke: bool = False  # every step at toy size on a CPU in a few minutes, on a generated tiny CIFAR-10
    steps: str = ""  # comma list of steps to run, in this order ("": the call's steps in priority order)
    repeats: int = 10  # runs of the speed recipe, for its mean ± std and 95% interval
    resume: bool = False  # continue the campaign in out (or start one): steps already ok are kept, the others run
    data: CampaignData = field(default_factory=CampaignData)


def check(cfg: CampaignConfig) -> None:
    if cfg.budget_min < 0:
        raise ConfigError(f"budget_min={cfg.budget_min}: must be positive (minutes, e.g. budget_min=8), or 0 for "
                          "the call's")
    if cfg.call not in (0, *CALLS):
        raise ConfigError(f"call={cfg.call}: one of {', '.join(map(str, CALLS))}, or 0 for every step")
    if cfg.repeats < 1:
        raise ConfigError(f"repeats={cfg.repeats}: must be at least 1")
    by_name(cfg.steps)


def budget_s(cfg: CampaignConfig) -> float:
    """The call's budget: budget_min when given, else the plan's for the call (25 min for every step)."""
    if cfg.budget_min:
        return cfg.budget_min * 60
    return CALLS[cfg.call].budget_s if cfg.call else 25 * 60


def gpu_key(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100', 'h200' -> 'H200': the estimates' column; other names as given."""
    m = re.search(r"(?<![A-Za-z0-9])H(100|200)(?![0-9])", name, flags=re.I)
    return f"H{m.group(1)}" if m else name.strip()


def slug(device_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3': the directory name for a GPU's results."""
    name = re.sub(r"^nvidia\s+", "", device_name.strip(), flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def describe_device() -> dict:
    """The GPU (or CPU) the campaign measures, its driver and the directory slug."""
    import torch

    from harness.provenance import device_names

    name, cuda, driver = device_names()[0], torch.cuda.is_available(), None
    if cuda:  # torch does not report the driver's version
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.split("\n")[0].strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    return {"name": name, "gpu": cuda, "driver": driver, "count": torch.cuda.device_count() if cuda else 0,
            "slug": slug(name) if cuda else "cpu"}


def default_out(device: dict, smoke: bool) -> Path:
    """runs/campaign-<gpu> (runs/ is git-ignored: publishing under docs/ takes an explicit out=); a smoke
    run never lands in (or resumes) the directory that holds the GPU's real figures."""
    return Path("runs") / f"campaign-{device['slug']}{'-smoke' if smoke else ''}"


def for_steps(path: Path | str) -> str:
    """`path` as the steps see it: they run from the repository's root, the campaign maybe from elsewhere
    (relative to the root when inside it, so the published commands carry no machine's paths)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


def has_cifar10(root: str) -> bool:
    """Every file of either official version under `root` (the reader's own check, harness.data.cifar)."""
    from harness.data.cifar import present

    return any(present(root, "cifar10").values())


def tiny_cifar(root: Path) -> Path:
    """256 training and 128 test images in the official binary layout: enough for every smoke step."""
    from harness.data.cifar import random_split, write_binary

    write_binary(root, "cifar10", random_split(256, seed=0), random_split(128, seed=1))
    return root


def registered_models(value: str) -> tuple[str, list[str]]:
    """A `model.name=` list with the names the registry does not hold dropped (globs kept), and the dropped."""
    from harness.models import list_models

    known = set(list_models())
    keep, dropped = [], []
    for m in (x.strip() for x in value.split(",")):
        if not m:
            continue
        (keep if any(c in m for c in "*?[") or m in known else dropped).append(m)
    return ",".join(keep), dropped


def command(step: Step, ctx: dict, smoke: bool) -> tuple[list[str], str]:
    """The step's argv (python -m module args...) and a note on models it had to drop."""
    args, note = [], ""
    for a in step.args + (step.smoke if smoke else ()):
        a = a.format(**ctx)
        if a.startswith("model.name=") and a != "model.name=":
            kept, dropped = registered_models(a[len("model.name="):])
            if dropped:
                note = f"not in the model registry, left out: {', '.join(dropped)}"
            a = "model.name=" + kept
        args.append(a)
    return [sys.executable, "-m", step.module, *args], note


def estimate(step: Step, gpu: str, repeats: int, smoke: bool) -> Estimate:
    """The step's planned seconds on `gpu` (steps.py says where they come from); smoke: the CPU's."""
    if smoke:
        return Estimate(run_s=step.smoke_s)
    return Estimate(step.start_s, step.compile_s, step.run_estimate(gpu, repeats))


# ----------------------------------------------------------------------------------------------------
# the plan


def plan_text(gpu: str, repeats: int, steps: str = "") -> str:
    """Each call's steps with their estimates and caps on `gpu`, as the budget would decide them if every
    step took its estimate; the calls' limits, timeouts and budgets."""
    from harness import tables

    gpu = gpu_key(gpu) or GPUS[0]
    chosen = by_name(steps)
    known = gpu in GPUS
    lines = [f"Plan on {gpu}" + ("" if known else f" (no estimates for it: the H100's run times x 2)")
             + f", speed recipe n={repeats}. Estimates in seconds: process start, torch.compile (default mode, "
             "cold; not scaled by the GPU's speed) and the measured work; the cap ends a step and keeps what it "
             "wrote. Where the numbers come from: harness/campaign/steps.py.", ""]
    for number, call in CALLS.items():
        steps_here = [s for s in chosen if s.call == number]
        if not steps_here:
            continue
        planned = plan([(s.name, estimate(s, gpu, repeats, False)) for s in steps_here], call.budget_s, REPORT_S)
        rows = []
        for s, p in zip(steps_here, planned):
            e, d = p.estimate, p.decision
            rows.append([s.name, f"{e.start_s:.0f}", f"{e.compile_s:.0f}", f"{e.run_s:.0f}", f"{d.estimate_s:.0f}",
                         f"{d.timeout_s:.0f}" if d.run else "-", f"{p.at_s:.0f}" if d.run else "-",
                         "yes" if d.run else f"no: {d.reason}"])
        used = sum(p.decision.estimate_s for p in planned if p.decision.run)
        lines += [f"Call {number} ({call.what}): {call.limit_s:.0f} s in all = {call.before_s:.0f} s before the "
                  f"campaign + the campaign under `timeout -k {KILL_AFTER_S} {call.timeout_s}` + {call.after_s:.0f} s "
                  f"to pack the results; the campaign's budget {call.budget_s:.0f} s, {REPORT_S} s of it for the final "
                  "report.",
                  "", tables.markdown_table(["step", "start", "compile", "run", "estimate", "cap", "starts at",
                                             "fits"], rows, align="lrrrrrrl"),
                  "", f"Estimated {used:.0f} s of {call.budget_s - REPORT_S:.0f} s.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# running one step


class Stopped(Exception):
    """SIGTERM (e.g. from `timeout`), SIGINT (Ctrl-C) or SIGHUP arrived: stop the step, keep what it wrote,
    write the report, exit 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def _note_signal(signum, frame):
    print(f"signal {signum}: already stopping (ending the step, writing the report)", file=sys.stderr)


def hold_signals() -> None:
    """After the first stop: a further signal is noted, never raised, so ending the step's processes (the
    SIGKILL after the grace included), its record and the report are finished whatever arrives."""
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _note_signal)


def end_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the step's process group (its DataLoader and compile workers too), SIGKILL after
    `grace_s`. harness.train ends a SIGTERM'd run with a checkpoint and exit 143."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def run_logged(argv: list[str], log: Path, timeout_s: float, env: dict) -> tuple[int | None, float, str]:
    """Run argv from the repository root, stdout and stderr into `log`; (exit code, seconds, how it was
    cut: "" | "cap" | Stopped's signal number as text). Its own process group, so a cap or a stop ends
    its workers too."""
    with open(log, "w") as f:
        f.write("$ " + shlex.join(argv) + "\n")
        f.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s), time.monotonic() - t0, ""
        except subprocess.TimeoutExpired:
            end_group(proc, 2 * STOP_GRACE_S)
            return proc.returncode, time.monotonic() - t0, "cap"
        except Stopped as e:
            hold_signals()
            end_group(proc, STOP_GRACE_S)
            return proc.returncode, time.monotonic() - t0, str(e.signum)


def record(step: Step, e: Estimate, argv: list[str], note: str) -> dict:
    """A step's entry in campaign.json; status and times are filled in as it is decided and run."""
    return {"name": step.name, "group": step.group, "call": step.call, "title": step.title, "status": "",
            "reason": "", "prior_s": e.fixed_s + e.run_s, "estimate": dataclasses.asdict(e), "estimate_s": None,
            "elapsed_s": None, "timeout_s": None, "command": shlex.join(["python", *argv[1:]]),
            "log": f"logs/{step.name}.log", "outputs": [f"{step.name}/{o}" for o in step.outputs], "missing": [],
            "note": note, "settings": step.settings, "measured_in_call": None, "data": None}


def run_step(step: Step, rec: dict, out: Path, argv: list[str], timeout_s: float, env: dict,
             attempt_of: int | None = None) -> float:
    """Run one step into out/<step>; fill in its record (status, elapsed, missing outputs); seconds taken.
    An earlier attempt there (of call `attempt_of`) is kept beside it as <step>.previous-<call>, never
    deleted: the report falls back to it when this one writes nothing. Raises Stopped, after filling in
    the record, when a signal stopped it."""
    from harness.campaign.report import previous_dir

    d = out / step.name
    if d.exists():
        d.rename(previous_dir(out, step.name, attempt_of))
    d.mkdir()
    rc, elapsed, cut = run_logged(argv, out / rec["log"], timeout_s, {**env, **step.env})
    for name in step.prune:  # at any depth: the speed recipe's repeats each have their own run directory
        for p in sorted(d.rglob(name), reverse=True):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    rec["elapsed_s"] = elapsed
    rec["missing"] = [o for o in rec["outputs"] if not (out / o).is_file()]
    kept = "; kept what it wrote" if any(p.is_file() for p in d.rglob("*")) else ""
    if cut == "cap":
        rec["status"] = f"cut at its cap after {elapsed:.0f} s{kept}"
    elif cut:
        rec["status"] = f"stopped by signal {cut} after {elapsed:.0f} s{kept}"
    elif rc != 0:
        rec["status"] = f"failed (exit {rc})"
    elif rec["missing"]:
        rec["status"] = "failed (no " + ", ".join(rec["missing"]) + ")"
    else:
        rec["status"] = "ok"
    if cut and cut != "cap":
        raise Stopped(int(cut))
    return elapsed


# ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_args(CampaignConfig, argv, prog="python -m harness.campaign", usage=USAGE)
    check(cfg)
    if cfg.plan:
        device = {"gpu": False} if cfg.gpu else describe_device()
        print(plan_text(cfg.gpu or (gpu_key(device["name"]) if device["gpu"] else GPUS[0]), cfg.repeats, cfg.steps))
        return {}
    handlers = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        return run(cfg, argv)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def run(cfg: CampaignConfig, argv: list[str]) -> dict:
    """The call: set-up, the steps, the report. A signal at any point after main() set its handlers
    (during set-up, a step or a report) ends the call with what it has: the report rewritten when the
    call's record exists, exit 128 + the signal's number, never a traceback."""
    from harness.campaign import report

    started = time.monotonic()
    st: dict = {}  # what set_up has made so far: tmp, then out, campaign, records, ctx
    stopped, failed = None, []
    try:
        set_up(cfg, argv, st)
        failed = run_steps(cfg, by_name(cfg.steps, cfg.call), st, started)
    except Stopped as e:
        hold_signals()  # a second signal must not cut the records or the report below
        stopped = e.signum
        for rec in st.get("records", {}).values():  # what the stop left undecided
            if rec["status"] == "":
                rec["status"], rec["reason"] = "not reached", f"the call was stopped by signal {stopped}"
    finally:
        if st.get("tmp"):
            shutil.rmtree(st["tmp"], ignore_errors=True)
    hold_signals()  # the final report is written whatever arrives now
    if "records" not in st:
        print(f"stopped by signal {stopped} while setting up: nothing measured, nothing recorded", file=sys.stderr)
        raise SystemExit(128 + stopped)
    out, campaign = st["out"], st["campaign"]
    call = campaign["calls"][-1]
    call["elapsed_s"] = time.monotonic() - started
    call["status"] = f"stopped by signal {stopped}" if stopped else "done"
    undecided = [r for r in campaign["steps"] if r["status"] in ("", "not reached", "not selected")
                 or r["status"].startswith("waits for call")]
    campaign["finished"] = not stopped and not undecided
    report.write(out, campaign, plot="" if stopped else None, final=True)  # stopped: no time for plots
    if stopped:
        print(f"stopped by signal {stopped}: wrote {out / 'report.md'} with what the steps wrote", file=sys.stderr)
        raise SystemExit(128 + stopped)
    print(f"wrote {out / 'report.md'} in {call['elapsed_s']:.0f} s", file=sys.stderr)
    if failed:
        raise UserError(f"{len(failed)} step(s) did not finish: {', '.join(failed)}; the report lists them, the "
                        f"logs under {out / 'logs'} say why")
    return campaign


def set_up(cfg: CampaignConfig, argv: list[str], st: dict) -> None:
    """Into `st`, as each is made (a signal can stop this part way): tmp (smoke: the temporary directory of
    a tiny CIFAR-10), then out, campaign (campaign.json's when resumed, this call's record appended) and
    records (every step's row: measured, to be run now, or why not) together, then ctx (what the steps
    read, the budget, DALI's presence, the earlier call of each step run again)."""
    from harness.campaign import report
    from harness.provenance import git_sha, provenance

    device = describe_device()
    gpu = gpu_key(device["name"]) if device["gpu"] else "cpu"
    out = Path(cfg.out) if cfg.out else default_out(device, cfg.smoke)
    previous = report.load(out / "campaign.json")
    if (out / "campaign.json").exists() and not cfg.resume:
        raise UserError(f"{out} already holds a campaign (campaign.json); continue it with resume=true, or "
                        "choose another out=DIR")
    if previous and previous.get("smoke") != cfg.smoke:
        raise UserError(f"{out} holds a {'smoke' if previous.get('smoke') else 'full-size'} campaign; resume it "
                        f"with smoke={'true' if previous.get('smoke') else 'false'}, or choose another out=DIR")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    # the tiny CIFAR-10's directory is made (and named) before the call's record, written after it, so a
    # signal in between still finds the record and the directory to remove
    if cfg.smoke:
        st["tmp"] = tempfile.mkdtemp(prefix="campaign-cifar-")  # removed by run(), whatever happens next
    data_root = st["tmp"] if cfg.smoke else for_steps(cfg.data.root)
    ctx = {"data_root": data_root, "verify": "structure" if cfg.smoke else "official", "repeats": cfg.repeats,
           "gpu": gpu, "attempts": {}}
    real_data = cfg.smoke or has_cifar10(str(REPO / data_root))
    data = ("a generated tiny CIFAR-10 (256 train / 128 test random images)" if cfg.smoke
            else f"CIFAR-10 from {data_root}" if real_data else f"random images (no CIFAR-10 under {data_root})")
    budget = Budget(budget_s(cfg), reserve_s=REPORT_S)
    call = {"call": cfg.call, "command": ["python", "-m", "harness.campaign", *argv],
            "budget_min": budget.budget_s / 60, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "elapsed_s": 0.0, "data": data, "git_sha": git_sha(), "status": "running"}
    campaign = previous or {"smoke": cfg.smoke, "device": device,
                            "provenance": provenance(1, "cuda" if device["gpu"] else "cpu"), "calls": [], "steps": []}
    campaign["calls"].append(call)
    campaign["config"], campaign["finished"] = dataclasses.asdict(cfg), False
    earlier = {r["name"]: r for r in campaign["steps"]}
    for r in campaign["steps"]:  # what earlier calls measured still calibrates the estimates
        if r.get("elapsed_s") is not None and r.get("estimate"):
            budget.learn(Estimate(**r["estimate"]), r["elapsed_s"])
    records, todo = {}, {s.name for s in by_name(cfg.steps, cfg.call)}
    for s in STEPS:  # every step has a row, in priority order: measured, to be run now, or why not
        argv_step, note = command(s, {**ctx, "dir": for_steps(out / s.name)}, cfg.smoke)
        rec = record(s, estimate(s, gpu, cfg.repeats, cfg.smoke), argv_step, note)
        if s.name in earlier and (earlier[s.name]["status"] == "ok" or (
                s.name not in todo and earlier[s.name].get("measured_in_call"))):
            rec = earlier[s.name]  # decided by an earlier call (measured, cut or skipped), not asked again
        elif s.name not in todo:
            rec["status"] = "not selected" if cfg.steps else f"waits for call {s.call}"
            rec["reason"] = f"steps={cfg.steps}" if cfg.steps else ""
        elif s.name in earlier:  # run again now: its earlier attempt's directory is kept under that call
            ctx["attempts"][s.name] = earlier[s.name].get("measured_in_call")
        records[s.name] = rec
    campaign["steps"] = list(records.values())
    st.update(out=out, campaign=campaign, records=records)
    if cfg.smoke:
        tiny_cifar(Path(data_root))
    from harness.data.loaders import dali_available

    ctx.update(real_data=real_data, data=data, budget=budget, dali=device["gpu"] and dali_available())
    st["ctx"] = ctx
    print(f"campaign on {device['name']}: call {cfg.call or 'all'}, budget {budget.budget_s:.0f} s, "
          f"{len(todo)} steps -> {out}", file=sys.stderr)


def run_steps(cfg: CampaignConfig, selected: list[Step], st: dict, started: float) -> list[str]:
    """Each selected step in order, decided by the budget, run, and the report rewritten after it; the steps
    that did not finish."""
    from harness.campaign import report

    out, campaign, records, ctx = st["out"], st["campaign"], st["records"], st["ctx"]
    budget, gpu, data, call = ctx["budget"], ctx["gpu"], ctx["data"], campaign["calls"][-1]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    mark, failed = started, []  # the set-up counts too
    for i, step in enumerate(selected, 1):
        rec = records[step.name]
        if rec["status"] == "ok":  # measured by an earlier call of this campaign
            continue
        budget.charge_overhead(time.monotonic() - mark)
        e = estimate(step, gpu, cfg.repeats, cfg.smoke)
        argv_step, _ = command(step, {**ctx, "dir": for_steps(out / step.name)}, cfg.smoke)
        decision = budget.decide(e)
        attempt_of = ctx["attempts"].get(step.name)
        rec.update(estimate_s=decision.estimate_s, measured_in_call=len(campaign["calls"]), data=data, status="",
                   reason="")
        if step.needs_data and not ctx["real_data"]:
            rec["status"], rec["reason"] = "skipped", NO_DATA.format(data_root=ctx["data_root"])
        elif step.needs_dali and not ctx["dali"]:
            rec["status"], rec["reason"] = "skipped", NO_DALI
        elif not decision.run:
            rec["status"], rec["reason"] = "skipped for time", decision.reason
        else:
            rec["timeout_s"] = decision.timeout_s
            print(f"[{i}/{len(selected)}] {step.name}: estimate {decision.estimate_s:.0f} s, cap "
                  f"{decision.timeout_s:.0f} s, {budget.left_s:.0f} s left", file=sys.stderr)
            try:
                budget.charge(e, run_step(step, rec, out, argv_step, decision.timeout_s, env, attempt_of))
            finally:
                took = "" if " after " in rec["status"] else f" in {rec['elapsed_s'] or 0:.0f} s"
                print(f"    {rec['status']}{took} (log {out / rec['log']})", file=sys.stderr)
            if rec["status"] != "ok":
                failed.append(step.name)
        mark = time.monotonic()
        call["elapsed_s"] = time.monotonic() - started
        report.write(out, campaign, plot=step.name if rec["elapsed_s"] is not None else "")
    return failed
