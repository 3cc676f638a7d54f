"""Nothing recompiles once a run is going: the speed recipe (configs/speed94.yaml: airnet, patch whitening
with its bias trained for the first epoch only, Muon, the linear schedule changing the lr every step, the
warm-up run, TTA) over 3 epochs and 2 repeats in one process compiles one training graph and one
evaluation graph, and nothing else.

A recompilation on a GPU costs seconds to minutes (inductor, autotuning) inside the timed run. Dynamo's
guards decide recompilation, not the code generator, so the run uses the `aot_eager` backend (dynamo and
AOT autograd, no code generation): the same graphs and guards as inductor in seconds on a CPU. The
Newton-Schulz iteration's own compiled function is checked in tests/test_speed.py."""
from __future__ import annotations

import json
import re
import sys

from tests.conftest import make_cifar, run_harness

PROBE = """
import json, sys
from torch._dynamo.utils import counters
from harness.train import cli
sys.argv = ["harness.train", *sys.argv[1:]]
try:
    cli()
except SystemExit as e:
    if e.code:
        raise
print("COUNTERS " + json.dumps({k: dict(v) for k, v in counters.items()}))
"""


def test_speed_recipe_compiles_two_graphs_across_epochs_and_repeats(tmp_path):
    root = make_cifar(tmp_path / "data")
    out = tmp_path / "run"
    proc = run_harness(
        ["--config", "configs/speed94.yaml", f"data.root={root}", "data.verify=structure", "train.precision=fp32",
         "train.compile=true", "train.compile_mode=default", "train.batch_size=64", "train.eval_batch_size=64",
         "train.epochs=3", "model.whiten_bias_epochs=1", "train.repeats=2", "run.wandb=false", "run.progress=false",
         f"run.dir={out}"],
        launcher=[sys.executable, "-c", PROBE], timeout=400,
        # the launcher's backend: train.compile=true then compiles with it (harness/training/precision.py)
        env={"ACCELERATE_DYNAMO_BACKEND": "aot_eager", "TORCH_LOGS": "recompiles"})
    counters = json.loads(proc.stdout.split("COUNTERS ", 1)[1])
    assert json.loads((out / "repeats.json").read_text())["n"] == 2
    summaries = [json.loads((out / f"seed-{k}" / "summary.json").read_text()) for k in range(2)]
    assert [s["steps"] for s in summaries] == [12, 12] and all(s["compile"] for s in summaries)
    # 2 repeats x (3 warm-up steps + 12 steps, then 6-view TTA over 2 test batches), and 2 graphs in all:
    # training, and evaluation (no_grad, eval mode), each compiled once
    assert counters["stats"]["unique_graphs"] == 2, counters
    assert counters["frames"]["total"] == 2, counters
    reasons = re.findall(r"guard failure\(s\):\s*\n.*?- (\S+: .*)", proc.stderr)
    assert len(reasons) == 1 and "grad_mode" in reasons[0], proc.stderr[-3000:]
