"""The training loop's parts, each on its own: precision/compile rules, EMA, stopping, checkpoints' safety,
accumulation groups, config ranges, and the throughput rows."""
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import FAST, make_cifar, run_harness
from harness import config as C
from harness.run.checkpoints import Checkpoints, weights_finite
from harness.run.directory import RunLock
from harness.run.stop import StopRequest
from harness.training.ema import EMA
from harness.errors import UserError
from harness.training.evaluate import Interrupted, evaluate
from harness.training.precision import resolve_compile, resolve_precision
from harness.training.checks import check_config
from harness.training.step import accum_divisor

GPU_BF16 = dict(cuda=True, bf16_supported=True)
GPU_OLD = dict(cuda=True, bf16_supported=False)
CPU = dict(cuda=False, bf16_supported=False)


# ---- precision and compile: the config and a (fake) launcher environment ---------------------------------

@pytest.mark.parametrize("value,env,device,expected", [
    ("auto", {}, GPU_BF16, "bf16"),
    ("auto", {}, GPU_OLD, "fp16"),  # V100/T4: fp16 with accelerate's gradient scaler
    ("auto", {}, CPU, "fp32"),
    ("auto", {"ACCELERATE_MIXED_PRECISION": "fp16"}, GPU_BF16, "fp16"),  # the launcher decides
    ("auto", {"ACCELERATE_MIXED_PRECISION": "no"}, GPU_BF16, "bf16"),  # accelerate's default names nothing
    ("fp32", {"ACCELERATE_MIXED_PRECISION": "no"}, GPU_BF16, "fp32"),
    ("bf16", {}, CPU, "bf16"),
    ("bf16", {"ACCELERATE_MIXED_PRECISION": "bf16"}, GPU_BF16, "bf16"),
])
def test_precision_rules(value, env, device, expected):
    assert resolve_precision(value, env=env, **device) == expected


@pytest.mark.parametrize("value,env,device,needle", [
    ("bf16", {"ACCELERATE_MIXED_PRECISION": "fp16"}, GPU_BF16, "--mixed_precision fp16"),
    ("fp32", {"ACCELERATE_MIXED_PRECISION": "bf16"}, GPU_BF16, "train.precision=fp32"),
    ("fp16", {}, CPU, "needs a CUDA GPU"),
    ("bf16", {}, GPU_OLD, "no bfloat16"),
    ("auto", {"ACCELERATE_MIXED_PRECISION": "fp8"}, GPU_BF16, "fp8"),
])
def test_precision_conflicts_are_errors_naming_both(value, env, device, needle):
    with pytest.raises(C.ConfigError, match=needle.replace("-", r"\-")):
        resolve_precision(value, env=env, **device)


def test_compile_rules():
    assert resolve_compile("auto", cuda=True, env={}) == (True, "inductor")
    assert resolve_compile("auto", cuda=False, env={}) == (False, "inductor")
    assert resolve_compile("auto", cuda=False, env={"ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"}) == (True, "inductor")
    assert resolve_compile("auto", cuda=True, env={"ACCELERATE_DYNAMO_BACKEND": "NO"}) == (True, "inductor")
    assert resolve_compile(True, cuda=False, env={"ACCELERATE_DYNAMO_BACKEND": "AOT_EAGER"}) == (True, "aot_eager")
    assert resolve_compile(False, cuda=True, env={"ACCELERATE_DYNAMO_BACKEND": "NO"}) == (False, "inductor")
    with pytest.raises(C.ConfigError, match="train.compile=false.*--dynamo_backend inductor"):
        resolve_compile(False, cuda=True, env={"ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"})


def test_compile_key_takes_true_false_auto_only():
    cfg = C.apply_overrides(C.Config(), ["train.compile=true"])
    assert cfg.train.compile is True
    assert C.apply_overrides(C.Config(), ["train.compile=auto"]).train.compile == "auto"
    with pytest.raises(C.ConfigError, match="train.compile"):
        C.apply_overrides(C.Config(), ["train.compile=sometimes"])


# ---- config ranges ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("override,needle", [
    ("train.eval_every=-1", "train.eval_every=-1"),
    ("train.label_smoothing=1.5", "train.label_smoothing"),
    ("optim.momentum=1.0", "optim.momentum"),
    ("run.keep_checkpoints=0", "run.keep_checkpoints"),
    ("data.cutout=40", "data.cutout"),
    ("train.max_steps=-5", "train.max_steps"),
    ("optim.betas=[0.9]", "optim.betas"),
])
def test_every_numeric_key_is_checked_before_the_run(override, needle):
    cfg = C.apply_overrides(C.Config(), [override])
    with pytest.raises(C.ConfigError, match=needle.replace("[", r"\[")):
        check_config(cfg, world=1)


def test_accumulation_groups_divide_by_their_true_size():
    # 7 micro-batches in groups of 3: [0,1,2] [3,4,5] [6]
    assert [accum_divisor(b, 7, 3) for b in range(7)] == [3, 3, 3, 3, 3, 3, 1]
    assert [accum_divisor(b, 8, 3) for b in range(8)] == [3, 3, 3, 3, 3, 3, 2, 2]
    assert [accum_divisor(b, 4, 1) for b in range(4)] == [1, 1, 1, 1]


# ---- EMA ----------------------------------------------------------------------------------------------------

def test_ema_follows_the_formula_for_parameters_and_buffers():
    """shadow_t = d * shadow_(t-1) + (1 - d) * w_t from the initial weights, BatchNorm statistics included;
    integer buffers (num_batches_tracked) copied."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 2))
    ema = EMA(model, 0.9)
    expected = {k: v.detach().clone().double() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        model(torch.randn(4, 3, 8, 8)).sum().backward()
        opt.step()
        opt.zero_grad()
        ema.update()
        for k, v in model.state_dict().items():
            expected[k] = 0.9 * expected[k] + 0.1 * v.double() if v.is_floating_point() else v.double()
    assert ema.steps == 5
    got = ema.module.state_dict()
    assert got.keys() == model.state_dict().keys()  # canonical keys
    for k in expected:
        assert torch.allclose(got[k].double(), expected[k], atol=1e-6), k
    assert got["1.num_batches_tracked"] == 5
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_state_round_trips():
    lin = torch.nn.Linear(3, 2)
    e = EMA(lin, 0.99)
    with torch.no_grad():
        lin.weight.mul_(2)
    e.update()
    state = e.state_dict()
    f = EMA(torch.nn.Linear(3, 2), 0.99)
    f.load_state_dict(state)
    assert f.steps == 1 and torch.equal(f.module.weight, e.module.weight)


# ---- evaluation and stopping ------------------------------------------------------------------------------

class _Acc:  # the few Accelerator members evaluate() uses, for one process
    device = torch.device("cpu")
    num_processes = 1

    @staticmethod
    def autocast():
        import contextlib
        return contextlib.nullcontext()

    @staticmethod
    def reduce(t, op):
        return t


def test_evaluation_stops_between_batches_when_asked():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10)).train()
    batches = [(torch.randn(4, 3, 4, 4), torch.randint(0, 10, (4,))) for _ in range(5)]
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) >= 2

    with pytest.raises(Interrupted):
        evaluate(model, batches, _Acc(), 10, should_stop=should_stop)
    assert len(asked) == 2 and model.training  # stopped after the 2nd batch, training mode restored
    out = evaluate(model, batches, _Acc(), 10, should_stop=lambda: False)
    assert out["n"] == 20


def _stop_worker(rank, port, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)

    class Acc:
        num_processes = 2

    stop = StopRequest(Acc())
    verdicts = []
    for call in range(8):
        if rank == 1 and call == 3:
            stop.signum = 15  # as if SIGTERM reached rank 1 only, between calls 2 and 3
        verdicts.append(stop.poll())
    results[rank] = verdicts
    dist.barrier()
    dist.destroy_process_group()


def run_two_ranks(worker) -> tuple:
    """`worker(rank, port, results)` in two processes (a gloo group on a free loopback port); their results."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(worker, args=(port, results), nprocs=2, join=True)
    return results[0], results[1]


def test_stop_is_agreed_by_all_ranks_at_the_same_call():
    a, b = run_two_ranks(_stop_worker)
    assert a == b  # the same verdict at every call on both ranks
    first = a.index(next(v for v in a if v))
    assert first == 4  # raised before call 3, exchanged at call 3, read at call 4: one call later, never blocking
    assert a[first] == 15


# ---- the run directory's safety -----------------------------------------------------------------------------

def test_a_second_training_cannot_take_a_locked_run_directory(tmp_path):
    lock = RunLock(tmp_path / "run")
    with pytest.raises(UserError, match="in use by pid"):
        RunLock(tmp_path / "run")
    lock.release()
    RunLock(tmp_path / "run").release()  # free again once the holder is gone


def test_locked_run_directory_stops_the_entry_point(tmp_path, cifar_root):
    run = tmp_path / "run"
    lock = RunLock(run)
    try:
        proc = run_harness(FAST + [f"data.root={cifar_root}", f"run.dir={run}"], check=False)
    finally:
        lock.release()
    assert proc.returncode != 0 and "is in use by" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("rank, expected", [(None, "error: bad value; use another"),
                                            (0, "error: bad value; use another"),
                                            (1, "error (rank 1): bad value; use another")])
def test_a_user_error_is_said_once_by_rank_0_or_by_a_rank_alone(tmp_path, rank, expected):
    """Alone: stderr. Under torchrun's agent (an error file named): rank 0 into its error file, which the
    agent's summary prints; another rank, when no SIGTERM from the agent came in its grace (rank 0 did not
    meet the error), into its own, naming its rank (the grace shortened here)."""
    import subprocess
    import sys

    from conftest import REPO

    code = ("import harness.errors as e\ne.RANK_GRACE_S = 0.2\n"
            "e.report(e.UserError('bad value; use another'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "TORCHELASTIC_ERROR_FILE")}
    env["PYTHONPATH"] = str(REPO)
    if rank is not None:
        env.update(RANK=str(rank), TORCHELASTIC_ERROR_FILE=str(tmp_path / "error.json"))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if rank is None:
        assert proc.stderr == expected + "\n"
    else:
        assert proc.stderr == "" and json.loads((tmp_path / "error.json").read_text())["message"] == expected


def test_non_finite_weights_never_become_a_checkpoint(tmp_path):
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 2)
    ck = Checkpoints(tmp_path, acc)
    ck.attach(model)
    good = ck.save(1)
    assert weights_finite(model) and (good / "model.safetensors").is_file()
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    assert not weights_finite(model)
    with pytest.raises(UserError, match="not finite.*no checkpoint was written"):
        ck.save(2)
    assert ck.latest() == good and not (tmp_path / "checkpoints" / "step-000000002").exists()


def test_saving_a_step_again_never_leaves_it_without_a_checkpoint(tmp_path, monkeypatch):
    """A step saved twice (a stop right after a periodic save, or a resumed evaluation stopped again) with
    keep=1: the old copy is moved aside, not deleted, until the new one is in place. A kill between the two
    renames (simulated: the second os.replace raises) leaves a checkpoint that `latest` and train.resume=auto
    find; a finished re-save leaves no copy aside."""

    from accelerate import Accelerator

    from harness.run import checkpoints as CK

    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 2)
    ck = Checkpoints(tmp_path, acc, keep=1)
    ck.attach(model)
    first = ck.save(3)
    again = ck.save(3)
    assert again == first and ck.latest() == first and [p.name for p in ck.dir.iterdir() if "step" in p.name] == [first.name]
    replace = os.replace

    def killed(src, dst):
        if Path(dst) == first:  # the new copy's rename into place: the process is killed before it
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(CK.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        ck.save(3)
    monkeypatch.setattr(CK.os, "replace", replace)
    found = ck.latest()
    assert found is not None and found.name == CK.ASIDE + first.name and CK.checkpoint_step(found) == 3
    assert CK.resolve_resume("auto", ck) == found
    ck.save(3)  # the next save of the step puts it back in place and removes the copy aside
    assert ck.latest() == first and not (ck.dir / (CK.ASIDE + first.name)).exists()


# ---- the loop, end to end -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    return make_cifar(tmp_path_factory.mktemp("parts"), "bin", n_train=192, n_test=64, learnable=True)


def test_eval_every_zero_evaluates_only_the_last_epoch_and_throughput_rows_are_consistent(tmp_path, learnable):
    run = tmp_path / "run"
    run_harness(FAST + [f"data.root={learnable}", f"run.dir={run}", "train.epochs=3", "train.eval_every=0",
                        "run.log_every=2", "train.batch_size=32", "train.grad_accum=2", "data.augment=false"])
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [3]
    steps = [r for r in rows if r["kind"] == "step"]
    assert len(steps) >= 4
    for r in steps:  # images counted in an interval = its steps x global batch x accumulation: no carry-over
        seen = r["images_per_s"] * r["step_ms"] / 1000  # images per step
        assert seen == pytest.approx(64, rel=1e-6), r
    assert (run / "model.safetensors").is_file()
    assert not os.path.exists(run / "ema.safetensors")


def _seed_worker(rank, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    from accelerate import Accelerator

    from harness.train import build_model

    acc = Accelerator(cpu=True)
    cfg = C.apply_overrides(C.Config(), ["model.name=simple_cnn", "train.channels_last=false"])
    model = build_model(cfg, 10, acc.device, acc.num_processes)
    weights = sum(float(p.detach().double().sum()) for p in model.parameters())
    mask = torch.nn.functional.dropout(torch.ones(256), 0.5, training=True).nonzero().flatten().tolist()
    results[rank] = (acc.num_processes, weights, mask)
    acc.wait_for_everyone()
    acc.end_training()  # also ends the process group


def test_ranks_start_from_the_same_weights_but_draw_their_own_dropout_masks():
    (w0, a, mask0), (w1, b, mask1) = run_two_ranks(_seed_worker)
    assert w0 == w1 == 2
    assert a == b  # identical initial weights
    assert mask0 != mask1  # different dropout masks
