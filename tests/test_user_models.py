"""Bring your own model: `model.name=package.module:callable` from a module outside the harness (a
temporary one here) trains through the real entry point, and every way such a name can be wrong is a clear
error naming the fix; `timm/<name>` without timm installed says how to install it."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import textwrap

import pytest
import torch

from conftest import FAST, make_cifar, run_harness
from harness.models import UnknownModelError, create_model, model_facts, model_source

MODULE = textwrap.dedent("""
    import torch
    from torch import nn


    def build(num_classes=10):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, num_classes))


    class Net(nn.Module):  # a class is a callable too
        def __init__(self, num_classes=10, width=4):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.head(self.body(x))


    def ten_classes_always(num_classes=10):
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))


    def no_num_classes():
        return build()


    def not_a_module(num_classes=10):
        return {"model": build(num_classes)}


    def too_small_input(num_classes=10):
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, num_classes))


    WIDTH = 8
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module named after the test's own folder (no clash between tests), importable in this process."""
    name = f"usermodels_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_a_user_callable_trains_one_epoch_through_harness_train(tmp_path, user_module):
    data = make_cifar(tmp_path / "data", learnable=True)
    run = tmp_path / "run"
    run_harness([*FAST, f"model.name={user_module}:build", f"data.root={data}", "data.download=false",
                 f"run.dir={run}"], env={"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == f"{user_module}:build" and summary["epochs"] == 1
    # the model's facts come from the same code path as the zoo's: 3*8*9 + 8 conv, 8*10 + 10 linear
    assert summary["params"] == 3 * 8 * 9 + 8 + 8 * 10 + 10
    assert 0.0 <= summary["test_acc"] <= 1.0


def test_user_callables_build_and_report_facts(user_module):
    model = create_model(f"{user_module}:Net", num_classes=100, width=6)  # extra keywords reach the callable
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100) and model.head.in_features == 6
    facts = model_facts(f"{user_module}:build", 10)
    assert facts["params"] == sum(p.numel() for p in create_model(f"{user_module}:build").parameters())
    assert facts["gflops"] > 0 and model_source(f"{user_module}:build") == f"{user_module}:build (user model)"


@pytest.mark.parametrize("attr, num_classes, words", [
    ("ten_classes_always", 100, ["(2, 10)", "(2, 100)", "num_classes"]),  # passes at 10, caught at 100
    ("no_num_classes", 10, ["unexpected keyword argument 'num_classes'", "must take num_classes"]),
    ("not_a_module", 10, ["type dict", "not a torch.nn.Module"]),
    ("too_small_input", 10, ["fails on a batch of two 3x32x32", "RuntimeError"]),
    ("WIDTH", 10, ["type int", "not a callable"]),
    ("biuld", 10, ["has no attribute 'biuld'", "did you mean build"]),
])
def test_a_user_callable_that_cannot_be_used_is_a_clear_error(user_module, attr, num_classes, words):
    with pytest.raises(UnknownModelError) as e:
        create_model(f"{user_module}:{attr}", num_classes=num_classes)
    assert str(e.value).startswith(f"{user_module}:{attr}")
    for w in words:
        assert w in str(e.value), (w, str(e.value))


@pytest.mark.parametrize("name, words", [
    ("no_such_module_here:build", ["no module named 'no_such_module_here'", "PYTHONPATH"]),
    ("harness.models:", ["package.module:callable"]),
    ("harness.models.nope:build", ["no module named 'harness.models.nope'"]),
])
def test_a_missing_module_or_malformed_name_is_a_clear_error(name, words):
    with pytest.raises(UnknownModelError) as e:
        model_source(name)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_a_module_whose_import_fails_names_the_missing_dependency(tmp_path, monkeypatch):
    (tmp_path / "needs_dep_xyz.py").write_text("import not_installed_dep_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnknownModelError, match="imports 'not_installed_dep_xyz', which is not installed"):
        create_model("needs_dep_xyz:build")


def test_train_refuses_a_bad_user_model_before_writing_the_run(tmp_path):
    run = tmp_path / "run"
    proc = run_harness([*FAST, "model.name=no_such_module_here:build", f"run.dir={run}"], check=False, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model.name" in proc.stderr and "no module named 'no_such_module_here'" in proc.stderr
    assert not run.exists()


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed here")
def test_timm_names_without_timm_say_how_to_install_it():
    with pytest.raises(UnknownModelError) as e:
        create_model("timm/resnet18")
    assert "timm/resnet18 needs timm" in str(e.value) and "pip install -e '.[timm]'" in str(e.value)


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed (the timm extra)")
def test_timm_models_build_for_cifar():
    model = create_model("timm/resnet18", num_classes=100)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    with pytest.raises(UnknownModelError, match="has no model"):
        model_source("timm/resnet18_typo")
