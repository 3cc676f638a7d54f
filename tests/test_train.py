"""Training end to end on the CPU: data formats, the loop, DDP, resume, tracking and bad input.

Every run here is a real `python -m harness.train` (or `accelerate launch`) subprocess on small CIFAR files
that the tests write in the official formats.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import FAST, REPO, make_cifar, run_harness
from harness import config as C
from harness.data.cifar import DataError, load_dataset, random_split, write_binary, write_python
from harness.training.checks import check_config
from harness.training.optim import lr_at, scaled_lr


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def rows(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def final_weights(run_dir: Path) -> dict:
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run_dir / "checkpoints" / latest / "model.safetensors"))


@pytest.fixture(scope="module")
def learnable_root(tmp_path_factory) -> Path:
    return make_cifar(tmp_path_factory.mktemp("learnable"), "bin", n_train=640, n_test=200, learnable=True)


# ---- pure pieces --------------------------------------------------------------------------------------

def test_lr_schedules():
    assert lr_at(0, 100, 10, 1.0, "cosine") == pytest.approx(0.1)  # warm-up starts above zero
    assert lr_at(9, 100, 10, 1.0, "cosine") == pytest.approx(1.0)
    assert lr_at(99, 100, 10, 1.0, "cosine") < 1e-3
    assert lr_at(55, 100, 10, 1.0, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(29, 100, 0, 1.0, "onecycle") == pytest.approx(1.0)  # peak at 30% by default
    assert lr_at(65, 100, 30, 1.0, "linear") == pytest.approx(0.5)
    assert lr_at(77, 100, 0, 0.3, "constant") == 0.3


def test_lr_scaling_rule_is_explicit():
    cfg = C.apply_overrides(C.Config(), ["train.batch_size=512", "optim.lr=0.1", "optim.ref_batch_size=128"])
    assert scaled_lr(cfg) == pytest.approx(0.4)
    cfg.optim.lr_scaling = "sqrt"
    assert scaled_lr(cfg) == pytest.approx(0.2)
    cfg.optim.lr_scaling = "none"
    cfg.train.grad_accum = 4
    assert scaled_lr(cfg) == pytest.approx(0.1)
    cfg.optim.lr_scaling = "linear"
    assert scaled_lr(cfg) == pytest.approx(1.6)  # the effective batch counts accumulation


def test_unknown_model_is_refused_before_the_run_directory_exists(tmp_path):
    proc = run_harness(["model.name=resnet19", f"run.dir={tmp_path / 'r'}"], check=False, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown model 'resnet19'" in proc.stderr and "resnet18" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_batch_size_must_divide_across_processes():
    cfg = C.apply_overrides(C.Config(), ["train.batch_size=100"])
    with pytest.raises(C.ConfigError, match=r"train.batch_size=100 does not divide across 3 processes.*99"):
        check_config(cfg, world=3)
    check_config(cfg, world=4)


# ---- data files -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("fmt", ["bin", "py"])
def test_both_official_formats_read_back_exactly(tmp_path, dataset, fmt):
    k = 10 if dataset == "cifar10" else 100
    train, test = random_split(60, k, 1), random_split(20, k, 2)
    (write_binary if fmt == "bin" else write_python)(tmp_path, dataset, train, test)
    ds = load_dataset(dataset, tmp_path, fmt, verify="structure")
    assert np.array_equal(ds.train.images, train.images) and np.array_equal(ds.train.labels, train.labels)
    assert np.array_equal(ds.test.images, test.images) and np.array_equal(ds.test.labels, test.labels)
    assert ds.num_classes == k and ds.train.images.shape[1:] == (32, 32, 3)


def test_binary_record_layout_is_the_official_one(tmp_path):
    """<1 label byte><1024 R><1024 G><1024 B> per record, as the CIFAR page documents."""
    train = random_split(5, 10, 3)
    write_binary(tmp_path, "cifar10", train, random_split(5, 10, 4))
    raw = (tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin").read_bytes()
    assert raw[0] == train.labels[0]
    assert raw[1:1025] == train.images[0, :, :, 0].tobytes()  # red plane, row-major
    assert raw[1025:2049] == train.images[0, :, :, 1].tobytes()


def test_damaged_binary_file_is_refused(tmp_path):
    make_cifar(tmp_path, "bin", n_train=50, n_test=10)
    f = tmp_path / "cifar-10-batches-bin" / "data_batch_2.bin"
    # the official check wants the official size
    with pytest.raises(DataError, match=r"data_batch_1.bin has \d+ bytes, the official file has 30730000"):
        load_dataset("cifar10", tmp_path, "bin", verify="official")
    f.write_bytes(f.read_bytes()[:-100])  # truncated mid-record
    with pytest.raises(DataError, match="data_batch_2.bin.*not a whole number of 3073-byte records"):
        load_dataset("cifar10", tmp_path, "bin", verify="structure")
    raw = bytearray((tmp_path / "cifar-10-batches-bin" / "test_batch.bin").read_bytes())
    raw[3073] = 200  # the second record's label byte
    (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(bytes(raw))
    f.write_bytes(f.read_bytes()[: 3073 * 3])
    with pytest.raises(DataError, match="test_batch.bin: record 1 has label 200"):
        load_dataset("cifar10", tmp_path, "bin", verify="structure")


def test_damaged_python_file_is_refused(tmp_path):
    make_cifar(tmp_path, "py", n_train=50, n_test=10)
    with pytest.raises(DataError, match=r"data_batch_1 does not match torchvision's md5 c99cafc1.*data.verify=structure"):
        load_dataset("cifar10", tmp_path, "py", verify="official")
    f = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(DataError, match="data_batch_3 cannot be read as a CIFAR pickle"):
        load_dataset("cifar10", tmp_path, "py", verify="structure")


def test_missing_data_says_where_to_put_which_file(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", tmp_path / "nothing", "auto", allow_download=False)
    msg = str(e.value)
    for part in ("cifar-10-batches-py", "data_batch_1", "cifar-10-batches-bin", "data_batch_1.bin", "data.root"):
        assert part in msg


def test_missing_data_offline_download_fails_cleanly(tmp_path):
    """No network here: the download attempt must end in the same clear message, not a traceback."""
    proc = run_harness(FAST + [f"data.root={tmp_path / 'none'}", f"run.dir={tmp_path / 'run'}"], check=False,
                       timeout=240)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "cifar-10-batches-bin" in proc.stderr and "could not be downloaded" in proc.stderr


# ---- the loop ---------------------------------------------------------------------------------------------

def test_single_process_run_writes_the_run_directory(tmp_path, learnable_root):
    run = tmp_path / "run"
    proc = run_harness(FAST + [f"data.root={learnable_root}", f"run.dir={run}", "train.epochs=3",
                               "data.val_size=128", "train.target_acc=0.6", "run.log_every=2",
                               "train.eval_batch_size=48"])
    s = summary(run)
    for key in ("test_acc", "val_acc", "wall_s", "train_images_per_s", "world_size", "epochs", "time_to_target_s"):
        assert key in s, key
    assert s["world_size"] == 1 and s["test_images"] == 200  # 200 = 4 full batches of 48 + a padded one
    assert s["val_acc"] >= 0.6 and s["time_to_target_s"] is not None  # reached on validation ...
    assert s["epochs"] < 3  # ... and stopped there
    assert 0 <= s["test_acc"] <= 1 and s["train_images_per_s"] > 0
    assert len(s["per_class_test_acc"]) == 10
    steps = rows(run, "step")
    assert {"loss", "lr", "images_per_s", "images_per_s_per_device", "step_ms", "data_ms", "peak_mem_mb"} <= set(steps[0])
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert {"val_acc", "test_acc", "train_loss"} <= set(rows(run, "epoch")[0])
    cfg = C.from_dict(C.Config, __import__("yaml").safe_load((run / "config.yaml").read_text()))
    assert cfg.run.dir == str(run) and cfg.data.val_size == 128
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["world_size"] == 1 and "torch" in prov["versions"] and prov["command"] and prov["devices"]
    assert (run / "checkpoints" / "latest").is_file()
    assert "target accuracy 0.6 reached" in proc.stdout + proc.stderr
    # the stop at the target is the end of the run: resuming it trains nothing more
    run_harness(FAST + [f"data.root={learnable_root}", f"run.dir={run}", "train.epochs=3", "data.val_size=128",
                        "train.target_acc=0.6", "train.eval_batch_size=48", "train.resume=auto"])
    again = summary(run)
    assert (again["epochs"], again["steps"], again["test_acc"]) == (s["epochs"], s["steps"], s["test_acc"])


@pytest.mark.slow
def test_two_process_ddp_keeps_ranks_identical_and_learns(tmp_path, learnable_root):
    run = tmp_path / "ddp"
    subset = list(range(1, 200, 3))  # 67 test images, spread over both ranks' strided shards
    (tmp_path / "subset.json").write_text(json.dumps(subset))
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(REPO / "launch/accelerate/cpu_ddp.yaml"), str(REPO / "harness/train.py")]
    run_harness(FAST + [f"data.root={learnable_root}", f"run.dir={run}", "train.epochs=2", "run.log_every=2",
                        "train.eval_batch_size=48", f"data.test_subset={tmp_path / 'subset.json'}"],
                launcher=launcher, timeout=400)
    s = summary(run)
    assert s["world_size"] == 2
    a, b = s["param_checksums"]
    assert a == b  # bit-identical weights on both ranks
    assert s["test_images"] == 200  # exact: each test image counted once across ranks, padding never
    # the subset too: its size, and its accuracy equal to the saved model's on those images by hand
    assert s["test_subset_images"] == 67
    from harness.data.loaders import normalise
    from harness.models import load_run

    test = load_dataset("cifar10", learnable_root, verify="structure").test
    with torch.no_grad():
        hit = (load_run(run)(normalise(test.images)).argmax(1).numpy() == test.labels)
    assert s["test_subset_acc"] == pytest.approx(hit[subset].mean(), abs=1e-12)
    assert s["test_acc"] == pytest.approx(hit.mean(), abs=1e-12)
    steps = rows(run, "step")
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert s["train_images_per_s_per_device"] == pytest.approx(s["train_images_per_s"] / 2)


def test_gradient_accumulation_matches_the_big_batch(tmp_path, learnable_root):
    """2 x 32 accumulated = one step of 64 (lenet5 has no batch norm, whose statistics would differ)."""
    common = FAST + [f"data.root={learnable_root}", "model.name=lenet5", "data.limit_train=256",
                     "optim.lr_scaling=none", "data.augment=false"]
    run_harness(common + ["train.batch_size=64", f"run.dir={tmp_path / 'big'}"])
    run_harness(common + ["train.batch_size=32", "train.grad_accum=2", f"run.dir={tmp_path / 'acc'}"])
    big, acc = final_weights(tmp_path / "big"), final_weights(tmp_path / "acc")
    assert summary(tmp_path / "acc")["steps"] == summary(tmp_path / "big")["steps"] == 4
    for k in big:
        assert np.allclose(big[k].numpy(), acc[k].numpy(), atol=1e-5), k


def test_optimiser_options_run(tmp_path, learnable_root):
    """AdamW, one-cycle, label smoothing, clipping, EMA, no decay on norms/biases and flip TTA together."""
    run = tmp_path / "opts"
    run_harness(FAST + [f"data.root={learnable_root}", f"run.dir={run}", "optim.name=adamw", "optim.lr=0.002",
                        "optim.schedule=onecycle", "optim.no_wd_norm_bias=true", "train.label_smoothing=0.1",
                        "train.grad_clip=1.0", "train.ema=0.9", "train.tta=flip", "data.cutout=8",
                        "optim.nesterov=true"])
    s = summary(run)
    assert 0 <= s["test_acc"] <= 1 and s["steps"] == 20
    ckpt = next((run / "checkpoints").glob("step-*"))
    assert (ckpt / "custom_checkpoint_1.pkl").is_file()  # the EMA weights travel with the checkpoint


@pytest.mark.slow
def test_bf16_compile_and_wandb_offline(tmp_path, learnable_root):
    run = tmp_path / "bf16"
    run_harness(FAST + [f"data.root={learnable_root}", f"run.dir={run}", "model.name=lenet5",
                        "train.precision=bf16", "train.compile=true", "run.wandb=true", "data.limit_train=128"],
                timeout=500)
    s = summary(run)
    assert s["precision"] == "bf16" and s["compile"] is True and math.isfinite(rows(run, "epoch")[0]["train_loss"])
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline, list(run.iterdir())
    assert any(offline[0].rglob("*.wandb"))


# ---- resume -------------------------------------------------------------------------------------------------

# issue 22's options on a model with stochastic depth: the loader's draws are keyed by (seed, epoch,
# position) and the drop masks come from the RNG states the checkpoint holds; the mixing stops at epoch 1,
# after the stop (which lands in epoch 0)
REGULARISED = ["model.name=compact_resnet", "model.drop_path=0.2", "data.mixup=0.8", "data.cutmix=1.0",
               "data.randaugment=rand-m9-n2", "data.random_erasing=0.25", "data.mix_stop_epoch=1",
               "train.label_smoothing=0.1"]


@pytest.mark.parametrize("extra", [[], pytest.param(REGULARISED, marks=pytest.mark.slow)],
                         ids=["plain", "regularised-drop-path"])
def test_sigterm_mid_epoch_then_resume_equals_a_straight_run(tmp_path, learnable_root, extra):
    args = FAST + [f"data.root={learnable_root}", "train.epochs=2", "train.batch_size=16", "run.log_every=1",
                   *extra]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run_harness(args + [f"run.dir={straight}"])

    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "harness.train"] + args + [f"run.dir={stopped}"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = stopped / "metrics.jsonl"
    deadline = time.time() + 200
    while time.time() < deadline and proc.poll() is None:  # signal once step 5 of 40 is logged
        if metrics.is_file() and any(json.loads(r)["step"] >= 5 for r in metrics.read_text().splitlines()):
            break
        time.sleep(0.02)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert time.time() - t0 < 30, "SIGTERM must end the run within seconds"
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "stopped by signal" in out and "train.resume=auto" in out
    batch = int(out.split("batch ")[-1].split(":")[0])
    assert 0 < batch < 40, f"the stop should land mid-epoch, got batch {batch}"
    assert not (stopped / "summary.json").exists()

    run_harness(args + [f"run.dir={stopped}", "train.resume=auto"])
    prov = json.loads((stopped / "provenance.json").read_text())
    assert "train.resume=auto" not in prov["command"] and "train.resume=auto" in prov["restarts"][0]["command"]
    a, b = final_weights(straight), final_weights(stopped)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), f"{k} differs after resume"
    assert summary(stopped)["test_acc"] == summary(straight)["test_acc"]
    assert summary(stopped)["steps"] == summary(straight)["steps"] == 80


def test_a_stop_at_an_epochs_end_checkpoints_at_once_and_the_resume_evaluates_first(tmp_path, learnable_root,
                                                                                     monkeypatch):
    """A stop signal on an epoch's last step: no evaluation is started (it could only be cut after a batch
    or two, spending the signal's grace period before the checkpoint); the checkpoint owes the evaluation,
    and the resumed start does it before training on, so the epoch's row is there once."""
    import harness.train as T

    original = T.StopRequest

    class StopAtEpochEnd(original):
        polls = 0

        def poll(self):  # the signal arrives with the 8th step, the last of epoch 1 (256 images / 32)
            StopAtEpochEnd.polls += 1
            if StopAtEpochEnd.polls == 8:
                self.signum = signal.SIGTERM
            return super().poll()

    evaluations = []
    evaluate_all = T.evaluate_all
    monkeypatch.setattr(T, "evaluate_all", lambda *a, **k: evaluations.append(1) or evaluate_all(*a, **k))
    monkeypatch.setattr(T, "StopRequest", StopAtEpochEnd)
    args = FAST + [f"data.root={learnable_root}", f"run.dir={tmp_path / 'run'}", "train.epochs=2",
                   "data.limit_train=256"]
    try:
        with pytest.raises(SystemExit) as stop:
            T.main(args)
    finally:
        for s in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(s, signal.SIG_DFL)
    assert stop.value.code == 128 + signal.SIGTERM and evaluations == []
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000000008"
    assert (checkpoint / "COMPLETE").is_file() and rows(tmp_path / "run", "epoch") == []
    monkeypatch.setattr(T, "StopRequest", original)
    try:
        T.main(args + ["train.resume=auto"])
    finally:
        for s in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(s, signal.SIG_DFL)
    assert [r["epoch"] for r in rows(tmp_path / "run", "epoch")] == [1, 2] and summary(tmp_path / "run")["steps"] == 16


def test_out_of_memory_in_the_warm_up_run_is_the_one_line_advice(tmp_path, learnable_root, monkeypatch):
    """train.warmup_run's full-batch steps come before the loop: running out of memory there is the same one
    line as in the loop (the batch per process and the fix), not a traceback."""
    import harness.train as T
    from harness.errors import UserError

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(T, "warm_up", out_of_memory)
    with pytest.raises(UserError, match=r"out of memory on cpu with 32 images per process .*Lower train.batch_size"):
        T.main(FAST + [f"data.root={learnable_root}", f"run.dir={tmp_path / 'run'}", "train.warmup_run=true"])


def test_nan_loss_stops_with_a_message_and_keeps_the_good_checkpoint(tmp_path, learnable_root):
    run = tmp_path / "nan"
    run_harness(FAST + [f"data.root={learnable_root}", f"run.dir={run}"])
    good = (run / "checkpoints" / "latest").read_text()
    weights = final_weights(run)
    proc = run_harness(FAST + [f"data.root={learnable_root}", f"run.dir={run}", "train.epochs=2",
                               "train.resume=auto", "optim.lr=1e30", "optim.schedule=constant",
                               "train.resume_force=true"], check=False)  # another recipe: forced
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "NaN" in proc.stderr and "optim.lr" in proc.stderr and "last good one" in proc.stderr
    assert (run / "checkpoints" / "latest").read_text() == good
    after = final_weights(run)
    assert all(np.array_equal(weights[k].numpy(), after[k].numpy()) for k in weights)
    # the good checkpoint keeps the recipe it was written with: resuming it with that lr needs no force
    run_harness(FAST + [f"data.root={learnable_root}", f"run.dir={run}", "train.epochs=2", "train.resume=auto"])
    assert summary(run)["epochs"] == 2


def test_a_fresh_run_refuses_a_run_directory_with_checkpoints(tmp_path, learnable_root):
    run = tmp_path / "taken"
    run_harness(FAST + [f"data.root={learnable_root}", f"run.dir={run}", "data.limit_train=64"])
    before, config = final_weights(run), (run / "config.yaml").read_text()
    proc = run_harness(FAST + [f"data.root={learnable_root}", f"run.dir={run}", "data.limit_train=64",
                               "train.epochs=3"], check=False)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr and "train.resume=auto" in proc.stderr
    after = final_weights(run)
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    assert (run / "config.yaml").read_text() == config and "restarts" not in (run / "provenance.json").read_text()


def test_resume_path_must_be_a_complete_checkpoint(tmp_path, learnable_root):
    proc = run_harness(FAST + [f"data.root={learnable_root}", f"run.dir={tmp_path / 'r'}",
                               f"train.resume={tmp_path}"], check=False)
    assert proc.returncode == 2 and "not a complete checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_batch_larger_than_the_shard_is_an_error(tmp_path, learnable_root):
    proc = run_harness(FAST + [f"data.root={learnable_root}", f"run.dir={tmp_path / 'r'}", "data.limit_train=20"],
                       check=False)
    assert proc.returncode == 2 and "larger than the training data" in proc.stderr


def test_missing_data_is_downloaded_and_a_bad_download_refused(tmp_path, monkeypatch):
    """The download path end to end against a server on loopback: fetch, md5-check, extract, read."""
    import functools
    import hashlib
    import http.server
    import tarfile
    import threading

    import torchvision

    src = make_cifar(tmp_path / "src", "py", n_train=20, n_test=10)
    tgz = src / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        t.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(src))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(torchvision.datasets.CIFAR10, "url",
                            f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz")
        monkeypatch.setattr(torchvision.datasets.CIFAR10, "tgz_md5", "0" * 32)  # a damaged download
        with pytest.raises(DataError, match="could not be downloaded"):
            load_dataset("cifar10", tmp_path / "bad", "auto", "structure", allow_download=True)
        monkeypatch.setattr(torchvision.datasets.CIFAR10, "tgz_md5", hashlib.md5(tgz.read_bytes()).hexdigest())
        ds = load_dataset("cifar10", tmp_path / "dst", "auto", "structure", allow_download=True)
        assert (len(ds.train), len(ds.test)) == (20, 10)
        assert (tmp_path / "dst" / "cifar-10-batches-py" / "data_batch_1").is_file()
    finally:
        server.shutdown()
