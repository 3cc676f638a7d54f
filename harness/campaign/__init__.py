"""The GPU campaign: every published figure from one command, in priority order, inside a time budget.

    python -m harness.campaign [budget_min=25] [out=docs/benchmarks/<gpu>] [smoke=true] [steps=zoo,ladder]

This module owns running the campaign: the steps (`steps.STEPS`) run one after another, each as a
subprocess of the harness's own CLI (`python -m harness.bench ...`, `python -m harness.train ...`), so an
OOM, a crash or a hang in one step ends only that step. Before each step the budget (`budget.Budget`)
rescales its time estimate by what the steps so far took and skips it, listed with the reason, when it no
longer fits; a step that runs gets a timeout from the time left, and its console output goes to
`logs/<step>.log`. After every step the report (`report.write`) is rewritten, so a campaign cut short
still leaves a complete, readable report of what it measured.

smoke=true runs every step at toy size on a CPU (a few minutes; what the tests run). It never reads data/:
it writes a tiny CIFAR-10 in the official binary format to a temporary directory. At full size, the
time-to-accuracy steps need the real CIFAR-10 under data.root and are skipped (and listed) without it;
the benchmarks fall back to random images and say so. Method and budget: docs/benchmarks/campaign.md.
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

from harness.campaign.budget import Budget
from harness.campaign.steps import STEPS, Step, by_name
from harness.cli import parse_args
from harness.config import ConfigError
from harness.errors import UserError

REPO = Path(__file__).resolve().parents[2]
NO_DATA = ("no CIFAR-10 under {data_root} (time to accuracy on random images means nothing; stage it with "
           "`python ../shared/tools/device_stage.py prepare`)")
USAGE = "python -m harness.campaign [budget_min=25] [out=DIR] [smoke=true] [resume=true] [key=value ...]"


@dataclass
class CampaignData:
    root: str = "data"  # the CIFAR-10 files (stage them on a GPU machine first; see the docs)


@dataclass
class CampaignConfig:
    budget_min: float = 25.0  # wall-clock budget for every step together, in minutes
    out: str = ""  # output directory ("": docs/benchmarks/<gpu>, e.g. h100-80gb-hbm3; cpu without CUDA; -smoke added)
    smoke: bool = False  # every step at toy size on a CPU in a few minutes, on a generated tiny CIFAR-10
    steps: str = ""  # comma list of steps to run ("": all): zoo, zoo-compiled, ladder, data, tta-speed94, ...
    repeats: int = 5  # runs of the speed recipe, for its mean ± std and 95% interval
    # continue the campaign in out (or start one): steps already ok are kept, the others run. One device
    # command may run 10 minutes at most, so a 25-minute campaign is several calls with resume=true
    resume: bool = False
    data: CampaignData = field(default_factory=CampaignData)


def check(cfg: CampaignConfig) -> None:
    if not cfg.budget_min > 0:
        raise ConfigError(f"budget_min={cfg.budget_min}: must be positive (minutes, e.g. budget_min=25)")
    if cfg.repeats < 1:
        raise ConfigError(f"repeats={cfg.repeats}: must be at least 1")
    by_name(cfg.steps)


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


def run_logged(argv: list[str], log: Path, timeout_s: float, env: dict) -> tuple[int, float, bool]:
    """Run argv from the repository root, stdout and stderr into `log`; (exit code, seconds, timed out).
    Its own process group, so a timeout also ends its DataLoader workers and compile workers."""
    with open(log, "w") as f:
        f.write("$ " + shlex.join(argv) + "\n")
        f.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=timeout_s), False
        except (subprocess.TimeoutExpired, KeyboardInterrupt) as e:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if isinstance(e, KeyboardInterrupt):
                raise
            rc, timed_out = proc.returncode, True
        return rc, time.monotonic() - t0, timed_out


def record(step: Step, prior_s: float, argv: list[str], note: str) -> dict:
    """A step's entry in campaign.json; status and times are filled in as it is decided and run."""
    return {"name": step.name, "group": step.group, "title": step.title, "status": "", "reason": "",
            "prior_s": prior_s, "estimate_s": None, "elapsed_s": None, "timeout_s": None,
            "command": shlex.join(["python", *argv[1:]]), "log": f"logs/{step.name}.log",
            "outputs": [f"{step.name}/{o}" for o in step.outputs], "missing": [], "note": note,
            "settings": step.settings}


def run_step(step: Step, rec: dict, out: Path, argv: list[str], timeout_s: float, env: dict) -> float:
    """Run one step into out/<step>; fill in its record (status, elapsed, missing outputs); seconds taken."""
    d = out / step.name
    if d.exists():  # a failed or cut-short attempt of an earlier call: start the step afresh
        shutil.rmtree(d)
    d.mkdir()
    rc, elapsed, timed_out = run_logged(argv, out / rec["log"], timeout_s, env)
    for name in step.prune:  # at any depth: the speed recipe's repeats each have their own run directory
        for p in sorted(d.rglob(name), reverse=True):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    rec["elapsed_s"] = elapsed
    rec["missing"] = [o for o in rec["outputs"] if not (out / o).is_file()]
    if timed_out:
        rec["status"] = f"timed out after {elapsed:.0f} s"
    elif rc != 0:
        rec["status"] = f"failed (exit {rc})"
    elif rec["missing"]:
        rec["status"] = "failed (no " + ", ".join(rec["missing"]) + ")"
    else:
        rec["status"] = "ok"
    return elapsed


def main(argv: list[str] | None = None) -> dict:
    from harness.campaign import report
    from harness.provenance import provenance

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_args(CampaignConfig, argv, prog="python -m harness.campaign", usage=USAGE)
    check(cfg)
    started = time.monotonic()
    selected = {s.name for s in by_name(cfg.steps)}
    device = describe_device()
    # a smoke run never lands in (or resumes) the directory that holds the GPU's real figures
    out = Path(cfg.out or Path("docs") / "benchmarks" / (device["slug"] + ("-smoke" if cfg.smoke else "")))
    previous = report.load(out / "campaign.json")
    if (out / "campaign.json").exists() and not cfg.resume:
        raise UserError(f"{out} already holds a campaign (campaign.json); continue it with resume=true, or "
                        "choose a new out=DIR")
    if previous and previous.get("smoke") != cfg.smoke:
        raise UserError(f"{out} holds a {'smoke' if previous.get('smoke') else 'full-size'} campaign; resume it "
                        f"with smoke={'true' if previous.get('smoke') else 'false'}, or choose a new out=DIR")
    (out / "logs").mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix="campaign-cifar-")) if cfg.smoke else None
    data_root = str(tiny_cifar(tmp)) if tmp else cfg.data.root
    ctx = {"data_root": data_root, "verify": "structure" if cfg.smoke else "official", "repeats": cfg.repeats}
    real_data = has_cifar10(data_root)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    # reserve: the final report's plots; grace: a short step's time varies most (process start, imports)
    budget = Budget(cfg.budget_min * 60, reserve_s=15 if cfg.smoke else 30, grace_s=60)
    call = {"command": ["python", "-m", "harness.campaign", *argv], "budget_min": cfg.budget_min,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "elapsed_s": 0.0}
    campaign = previous or {
        "smoke": cfg.smoke, "device": device, "provenance": provenance(1, "cuda" if device["gpu"] else "cpu"),
        "data": ("a generated tiny CIFAR-10 (256 train / 128 test random images)" if cfg.smoke
                 else f"CIFAR-10 from {data_root}" if real_data else f"no CIFAR-10 under {data_root}: random images"),
        "calls": [], "steps": [], "finished": False}
    campaign["calls"].append(call)
    campaign["config"], campaign["finished"] = dataclasses.asdict(cfg), False
    done = {r["name"]: r for r in campaign["steps"] if r["status"] == "ok"}
    for r in campaign["steps"]:  # what earlier calls measured still calibrates the estimates
        if r.get("elapsed_s") is not None:
            budget.learn(r["prior_s"], r["elapsed_s"])
    campaign["steps"] = []
    print(f"campaign on {device['name']}: budget {cfg.budget_min:g} min, {len(selected)} steps -> {out}",
          file=sys.stderr)
    mark, failed = time.monotonic(), []
    try:
        for i, step in enumerate(STEPS, 1):
            if step.name in done:  # measured by an earlier call of this campaign
                campaign["steps"].append(done[step.name])
                continue
            budget.charge_overhead(time.monotonic() - mark)
            prior = step.smoke_s if cfg.smoke else step.gpu_s
            argv_step, note = command(step, {**ctx, "dir": str(out / step.name)}, cfg.smoke)
            rec = record(step, prior, argv_step, note)
            campaign["steps"].append(rec)
            decision = budget.decide(prior)
            rec["estimate_s"] = decision.estimate_s
            if step.name not in selected:
                rec["status"], rec["reason"] = "not selected", f"steps={cfg.steps}"
            elif step.needs_data and not real_data:
                rec["status"], rec["reason"] = "skipped", NO_DATA.format(data_root=data_root)
            elif not decision.run:
                rec["status"], rec["reason"] = "skipped for time", decision.reason
            else:
                rec["timeout_s"] = decision.timeout_s
                print(f"[{i}/{len(STEPS)}] {step.name}: estimate {decision.estimate_s:.0f} s, timeout "
                      f"{decision.timeout_s:.0f} s, {budget.left_s:.0f} s left", file=sys.stderr)
                try:
                    budget.charge(prior, run_step(step, rec, out, argv_step, decision.timeout_s, env))
                except KeyboardInterrupt:  # the step's processes are ended; the report says where it stopped
                    rec["status"] = "interrupted"
                    report.write(out, campaign, plot=None)
                    raise
                if rec["status"] != "ok":
                    failed.append(step.name)
                print(f"    {rec['status']} in {rec['elapsed_s']:.0f} s (log {out / rec['log']})", file=sys.stderr)
            mark = time.monotonic()
            call["elapsed_s"] = time.monotonic() - started
            report.write(out, campaign, plot=step.name if rec["elapsed_s"] is not None else None)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    campaign["finished"] = True
    call["elapsed_s"] = time.monotonic() - started
    report.write(out, campaign, plot=None)
    print(f"wrote {out / 'report.md'} in {call['elapsed_s']:.0f} s", file=sys.stderr)
    if failed:
        raise UserError(f"{len(failed)} step(s) failed: {', '.join(failed)}; the report lists them, the logs "
                        f"under {out / 'logs'} say why")
    return campaign
