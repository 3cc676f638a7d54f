"""The local launcher: one run per free GPU (CUDA_VISIBLE_DEVICES per run; a run needing k GPUs waits, in
order, for k free), one at a time without GPUs; every run through `accelerate launch` with the sweep's
threads per process in its environment (OMP/MKL_NUM_THREADS, recorded by the run's provenance.json);
failures recorded, the other runs still run; a progress line (done / failed / remaining, ETA) after each
run; SIGTERM or Ctrl-C asks every run to checkpoint."""
from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.provenance import REPO, THREAD_VARS
from harness.sweep.spec import Run


def visible_gpus() -> list[str]:
    """GPU ids this process may hand out: CUDA_VISIBLE_DEVICES if set, else all that torch sees."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def local_accelerate() -> str:
    """The accelerate script installed beside this interpreter (a venv need not be activated)."""
    beside = Path(sys.executable).parent / "accelerate"
    return str(beside) if beside.is_file() else "accelerate"


def run_env(run: Run, gpu_ids: list[str]) -> dict:
    """The environment of one run: its GPUs, and its threads per process for every library that reads a
    variable (accelerate's --num_cpu_threads_per_process sets only OMP_NUM_THREADS)."""
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ",".join(gpu_ids)} if gpu_ids else {}))
    env.update({var: str(run.threads) for var in THREAD_VARS})
    env["HARNESS_THREADS_SET_BY"] = f"sweep threads_per_process={run.threads}"
    return env


def progress_line(name: str, total: int, done: int, failed: int, took: list[float], slots: int) -> str:
    """`sweep NAME: 3/8 finished (2 done, 1 failed, 5 remaining) | ETA 0:12:30`: the ETA is the mean time
    of the runs that ran here times the remaining ones, over the runs that go at once."""
    remaining = total - done - failed
    line = f"sweep {name}: {done + failed}/{total} finished ({done} done, {failed} failed, {remaining} remaining)"
    if took and remaining:
        eta = sum(took) / len(took) * -(-remaining // max(1, slots))
        line += f" | ETA {dt.timedelta(seconds=round(eta))}"
    return line


def run_local(runs: list[Run], commands: dict[int, list[str]], gpus: list[str], name: str = "") -> list[tuple[Run, str]]:
    """Run every unfinished run, one per free GPU (CPU: one at a time); return (run, why) per failure.
    After each run, a progress line for the sweep `name` (whole lines: the output is usually a log)."""
    stale = {r.index: r.mismatch() for r in runs}
    failures: list[tuple[Run, str]] = [(r, stale[r.index]) for r in runs if stale[r.index]]
    for r, why in failures:
        print(f"[{r.index}] FAILED {r.name}: {why}")
    for r in runs:
        if r.done and not stale[r.index]:
            print(f"[{r.index}] skip {r.name}: {r.dir / 'summary.json'} exists")
    pending = [r for r in runs if not r.done and not stale[r.index]]
    for r in [r for r in pending if gpus and r.gpus > len(gpus)]:
        failures.append((r, f"needs {r.gpus} GPUs; this machine offers {len(gpus)}"))
        pending.remove(r)
    free = list(gpus)
    running: dict[subprocess.Popen, tuple[Run, list[str], float]] = {}
    done, durations = sum(r.done and not stale[r.index] for r in runs), []

    def report() -> None:
        print(progress_line(name, len(runs), done, len(failures), durations, max(1, len(gpus))), flush=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while pending or running:
            # strict order: the head of the queue waits for its k GPUs rather than being overtaken
            while pending and (len(free) >= pending[0].gpus if gpus else not running):
                run = pending.pop(0)
                ids, free = free[:run.gpus], free[run.gpus:]
                env = run_env(run, ids)
                run.dir.mkdir(parents=True, exist_ok=True)
                log = open(run.dir / "launch.log", "ab")
                # own session: a Ctrl-C at the terminal reaches the sweep, which asks each run to checkpoint
                proc = subprocess.Popen(commands[run.index], cwd=REPO, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                log.close()
                running[proc] = (run, ids, time.time())
                where = (f"GPU {','.join(ids)}" if gpus else "CPU") + f", {run.threads} thread(s) per process"
                print(f"[{run.index}] start {run.name} on {where} (log {run.dir / 'launch.log'})", flush=True)
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                run, ids, t0 = running.pop(proc)
                free += ids
                took = time.time() - t0
                durations.append(took)
                if proc.returncode == 0 and run.done:
                    done += 1
                    print(f"[{run.index}] done {run.name} in {took:.0f} s", flush=True)
                    report()
                    continue
                why = (f"exit status {proc.returncode}" if proc.returncode else "exited 0 without summary.json")
                failures.append((run, why))
                tail = (run.dir / "launch.log").read_text(errors="replace").splitlines()[-12:]
                print(f"[{run.index}] FAILED {run.name} ({why}) after {took:.0f} s; last lines of "
                      f"{run.dir / 'launch.log'}:\n    " + "\n    ".join(tail), flush=True)
                report()
    except KeyboardInterrupt:
        # SIGTERM makes harness.train checkpoint and exit; the same sweep command resumes the runs
        for proc in running:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in running:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        print(f"sweep stopped; {len(running)} run(s) asked to checkpoint. Run the same command to resume.")
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    return failures
