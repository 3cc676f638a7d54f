"""A run's whole life: a resume that refuses a changed recipe (and records the changes it allows), the best
validation epoch's weights kept beside the last, one error line for a job of several processes, and tools
that write nothing into the source tree (checked in a fresh clone, as CI has it).

W&B across starts (one history, offline too, and `python -m harness.sync`) is tests/test_tracking.py's.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import FAST, REPO, learnable_split, make_cifar, run_harness
from harness import config as C
from harness.data.cifar import Split, load_dataset, write_binary
from harness.errors import UserError
from harness.models import load_run
from harness.run.directory import check_recipe, data_files


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def record(run: Path) -> dict:
    """What a refused start must leave exactly as it was."""
    return {name: (run / name).read_bytes() for name in ("config.yaml", "provenance.json", "metrics.jsonl")} | {
        "wandb": sorted(p.name for p in (run / "wandb").iterdir()) if (run / "wandb").is_dir() else []}


# ---- resume checks the recipe -------------------------------------------------------------------------------


def test_resume_refuses_a_changed_recipe_in_one_line_and_records_what_it_allows(tmp_path):
    data = make_cifar(tmp_path / "data", n_train=128, n_test=64, learnable=True)
    run = tmp_path / "run"
    args = [*FAST, f"data.root={data}", f"run.dir={run}", "data.download=false", "run.log_every=2"]
    run_harness([*args, "run.wandb=true"])
    before = record(run)

    # the case: a smaller data set, another lr and batch, more epochs; and a data.root with other
    # files (none at all): refused by naming every changed key but train.epochs, before any data is read
    nowhere = tmp_path / "nowhere"
    proc = run_harness([*args, "train.resume=auto", "train.epochs=2", "data.limit_train=64", "optim.lr=0.5",
                        "train.batch_size=16", f"data.root={nowhere}"], check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: train.resume: ") and (
        f"was written with another recipe: data.limit_train: 0 -> 64, data.root: {data} -> {nowhere} (other "
        f"files), optim.lr: 0.1 -> 0.5, train.batch_size: 32 -> 16. Start a new run.dir, or pass "
        f"train.resume_force=true") in proc.stderr
    assert "train.epochs" not in proc.stderr

    proc = run_harness([*args, "train.resume=auto", "optim.name=adamw"], check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "optim.name: sgd -> adamw." in proc.stderr

    # forced, the optimiser state of SGD cannot become AdamW's: one line, no traceback, nothing written
    proc = run_harness([*args, "train.resume=auto", "optim.name=adamw", "train.resume_force=true"], check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "does not fit this run's optimiser" in proc.stderr and "optim.name" in proc.stderr
    assert record(run) == before  # config.yaml, provenance.json, metrics.jsonl and W&B as they were
    # forced, EMA switched on: the checkpoint holds fewer objects than the run registers; said as such
    proc = run_harness([*args, "train.resume=auto", "train.ema=0.9", "train.resume_force=true"], check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "holds other objects than this run's (TrainState, EMA): train.ema or train.lookahead_every" in proc.stderr
    assert record(run) == before

    # allowed changes resume, and are recorded; config.yaml then describes the run as it now is
    proc = run_harness([*args, "train.resume=auto", "train.epochs=2"])
    assert ("resumed with changed settings: run.wandb: true -> false, train.epochs: 1 -> 2 (recorded in "
            "provenance.json)") in proc.stdout
    # a forced change of recipe too, said as such; every start's command and config stay in provenance.json
    proc = run_harness([*args, "train.resume=auto", "train.epochs=3", "optim.lr=0.2", "train.resume_force=true"])
    assert "train.resume_force=true: resumed with a changed recipe: optim.lr: 0.1 -> 0.2, train.epochs: 2 -> 3" in proc.stdout
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["config"]["optim"]["lr"] == 0.1 and prov["config_changes"] == {} and prov["resumed_from"] is None
    allowed, forced = prov["restarts"]
    assert (allowed["config_changes"], allowed["resume_forced"]) == ({"run.wandb": [True, False],
                                                                      "train.epochs": [1, 2]}, [])
    assert (forced["config_changes"], forced["resume_forced"]) == ({"optim.lr": [0.1, 0.2], "train.epochs": [2, 3]},
                                                                   ["optim.lr"])
    assert "optim.lr=0.2" in forced["command"] and forced["resumed_from"].endswith(f"step-{2 * 4:09d}")
    now = C.from_dict(C.Config, yaml.safe_load((run / "config.yaml").read_text()))
    assert (now.optim.lr, now.train.epochs) == (0.2, 3) and summary(run)["epochs"] == 3
    with pytest.raises(UserError, match=r"no best.safetensors: .*data.val_size"):  # no validation split here
        load_run(run, which="best")


def test_keys_added_to_the_config_since_a_run_count_as_unchanged_at_their_default():
    cfg = C.Config()
    stored = C.to_dict(cfg)
    del stored["data"]["flip_mode"], stored["train"]["resume_force"]  # a run from before these keys existed
    stored["train"]["resume"] = ""
    cfg.train.resume = "auto"  # the start's own instruction, never compared
    assert C.recipe_changes(stored, cfg) == {}
    cfg.data.flip_mode = "alternate"
    assert C.recipe_changes(stored, cfg) == {"data.flip_mode": (None, "alternate")}
    assert set(C.RESUMABLE) <= set(C.leaf_keys(C.Config()))  # every allowed key exists


def test_keys_removed_from_the_config_since_a_run_count_as_unchanged_when_they_were_off():
    cfg = C.Config()
    stored = C.to_dict(cfg)
    stored["train"]["tta_flip"] = False  # a run from before train.tta replaced train.tta_flip
    assert C.recipe_changes(stored, cfg) == {}
    stored["train"]["tta_flip"] = True  # it evaluated with the mirror: another recipe, named
    assert C.recipe_changes(stored, cfg) == {"train.tta_flip": (True, None)}


def test_a_moved_data_root_resumes_only_when_it_holds_the_same_files(tmp_path):
    """check_recipe against a run directory written by hand: config.yaml, the last start's data files in
    provenance.json, a complete checkpoint."""
    first = make_cifar(tmp_path / "a", n_train=64, n_test=32)
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step-000000004"
    ckpt.mkdir(parents=True)
    (ckpt / "COMPLETE").write_text("4\n")
    old = C.apply_overrides(C.Config(), [f"data.root={first}"])
    (run / "config.yaml").write_text(C.to_yaml(old))
    (run / "provenance.json").write_text(json.dumps({"data_files": data_files(old.data)}))
    moved = tmp_path / "b"
    shutil.copytree(first, moved)
    shutil.rmtree(first)  # moved, not copied: the record alone vouches for the old files
    cfg = C.apply_overrides(C.Config(), [f"data.root={moved}"])
    assert check_recipe(cfg, ckpt) == ({"data.root": (str(first), str(moved))}, [])
    other = make_cifar(tmp_path / "c", n_train=96, n_test=32)  # other sizes
    cfg = C.apply_overrides(C.Config(), [f"data.root={other}"])
    with pytest.raises(UserError, match=rf"data.root: {first} -> {other} \(other files\)\. Start a new run.dir"):
        check_recipe(cfg, ckpt)
    cfg.train.resume_force = True
    assert check_recipe(cfg, ckpt)[1] == ["data.root"]


# ---- best and last --------------------------------------------------------------------------------------------


def worsening(root: Path, n: int = 640, val: int = 128) -> Path:
    """Learnable images whose last `val` training images (the validation split) carry the next class's label:
    the better a model learns the training set, the worse it does on validation."""
    train, test = learnable_split(n, 10, 0), learnable_split(200, 10, 1)
    labels = train.labels.copy()
    labels[-val:] = (labels[-val:] + 1) % 10
    write_binary(root, "cifar10", Split(train.images, labels), test)
    return root


def test_the_best_validation_epoch_is_kept_beside_the_last_and_loads(tmp_path):
    from harness.inspect import predict

    data = worsening(tmp_path / "data")
    run = tmp_path / "run"
    args = [*FAST, f"data.root={data}", f"run.dir={run}", "data.val_size=128", "optim.lr=0.4",
            "run.keep_checkpoints=4"]
    run_harness([*args, "train.epochs=3"])
    s = summary(run)
    steps_per_epoch = 512 // 32
    assert s["best_val_epoch"] < 3 and s["best_val_acc"] > s["val_acc"]  # the last epoch is worse
    assert s["best_weights"] == "best.safetensors" and s["weights"] == "model.safetensors"
    best, last = load_file(str(run / "best.safetensors")), load_file(str(run / "model.safetensors"))
    # best.safetensors is the model of the best epoch exactly: its checkpoint's weights
    at_best = load_file(str(run / "checkpoints" / f"step-{s['best_val_epoch'] * steps_per_epoch:09d}" / "model.safetensors"))
    assert best.keys() == at_best.keys() and all(np.array_equal(best[k].numpy(), at_best[k].numpy()) for k in best)
    assert any(not np.array_equal(best[k].numpy(), last[k].numpy()) for k in best)
    with safe_open(str(run / "best.safetensors"), "pt") as f:
        meta = f.metadata()
    assert int(meta["epoch"]) == s["best_val_epoch"] and float(meta["val_acc"]) == pytest.approx(s["best_val_acc"])

    model = load_run(run, which="best")
    assert all(np.array_equal(v.numpy(), best[k].numpy()) for k, v in model.state_dict().items())
    assert all(np.array_equal(v.numpy(), last[k].numpy()) for k, v in load_run(run).state_dict().items())
    train = load_dataset("cifar10", data, "auto", "structure").train  # the validation split: its last 128
    acc = float((predict(model, train.images[-128:], "cpu").argmax(1) == train.labels[-128:]).mean())
    assert acc == pytest.approx(s["best_val_acc"], abs=1 / 128)  # its accuracy is the best epoch's

    inspected = run_harness([str(run), "weights=best", f"out={tmp_path / 'inspect'}", "images=1"],
                            module="harness.inspect")
    assert "inspect.md" in inspected.stdout
    assert "weights: best.safetensors" in (tmp_path / "inspect" / "inspect.md").read_text()

    # kept across a resume that trains on without beating it
    kept = (run / "best.safetensors").read_bytes()
    run_harness([*args, "train.epochs=4", "train.resume=auto"])
    again = summary(run)
    assert (again["best_val_epoch"], again["best_val_acc"]) == (s["best_val_epoch"], s["best_val_acc"])
    assert (run / "best.safetensors").read_bytes() == kept and again["epochs"] == 4


# ---- one error line per job ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("bad, message", [
    (["train.batch_size=127"], "error: train.batch_size=127 does not divide across 2 processes"),
    (["data.root={tmp}/missing", "data.download=false"], "error: CIFAR files of cifar10 is missing under {tmp}/missing"),
])
def test_two_processes_say_a_config_or_data_error_once(tmp_path, cifar_root, bad, message):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(REPO / "launch/accelerate/cpu_ddp.yaml"), str(REPO / "harness/train.py")]
    args = [*FAST, f"data.root={cifar_root}", f"run.dir={tmp_path / 'run'}", *[b.format(tmp=tmp_path) for b in bad]]
    proc = run_harness(args, launcher=launcher, check=False, timeout=300)
    out = proc.stdout + proc.stderr
    message = message.format(tmp=tmp_path)
    assert proc.returncode != 0 and out.count(message.split(": ", 1)[1][:40]) == 1, out[-4000:]
    # torchrun's summary names it as the root cause, rank 0's, and every rank exited 2
    assert re.search(r"Root Cause .*\n(.*\n){0,6}\s+rank\s+: 0 .*\n(.*\n){0,3}\s+traceback : " + re.escape(message),
                     out), out[-4000:]
    assert len(re.findall(r"exitcode\s+: 2 ", out)) == 2 and out.count("stopped with rank 0") == 1, out[-4000:]
    assert not re.search(r'File ".*harness/', out)  # no traceback of ours: only the launcher's own


# ---- nothing into the source tree -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh clone of this repository's committed state, as CI checks it out."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    dst = tmp_path_factory.mktemp("clone") / "harness"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(dst)], check=True, timeout=120)
    return dst


def in_clone(clone: Path, module: str, args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(clone), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{module} {args}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def untracked(clone: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=clone, capture_output=True,
                          text=True, check=True).stdout


def test_every_tool_writes_under_runs_by_default_in_a_fresh_clone(clone, tmp_path):
    data = make_cifar(tmp_path / "data", n_train=64, n_test=32)
    in_clone(clone, "harness.train", [*FAST, "run.wandb=true", f"data.root={data}", "data.download=false",
                                      "data.val_size=16"])
    (run,) = (clone / "runs").glob("simple_cnn-*")
    assert (run / "summary.json").is_file() and (run / "best.safetensors").is_file()
    in_clone(clone, "harness.inspect", [str(run.relative_to(clone)), "images=1"])
    assert (clone / "runs" / f"inspect-{run.name}" / "inspect.md").is_file()
    in_clone(clone, "harness.report", ["runs"])
    assert list((clone / "runs").glob("report-*/report.md"))
    in_clone(clone, "harness.bench", ["suite=ddp", "model.name=lenet5", "batch_sizes=2", "steps=1", "warmup=0",
                                      "repeats=1", "run.progress=false"])
    assert list((clone / "runs").glob("bench-*/ddp_overhead.json"))
    in_clone(clone, "harness.sweep", ["configs/sweeps/smoke.yaml", "dry_run=true"])
    in_clone(clone, "harness.sync", [str(run.relative_to(clone)), "dry_run=true"])
    assert untracked(clone) == ""


@pytest.mark.slow
def test_the_smoke_campaign_writes_under_runs_by_default_in_a_fresh_clone(clone):
    """Every step of the campaign at toy size (a few minutes here), into its default runs/campaign-<device>-smoke."""
    in_clone(clone, "harness.campaign", ["smoke=true"], timeout=900)
    assert list((clone / "runs").glob("campaign-*-smoke/report.md"))
    assert untracked(clone) == ""
