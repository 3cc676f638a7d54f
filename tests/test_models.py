"""Model zoo tests: every registered model is checked automatically (shape, head, gradients,
seed parameter count, channels_last, bf16 autocast), plus the registry, FLOP counting, the
`python -m harness.models` table, and torch.compile on a few models."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from harness.models import (
    UnknownModelError,
    count_params,
    create_model,
    forward_flops,
    list_models,
    model_facts,
    model_source,
    register_model,
)
from harness.models.__main__ import main as cli_main

# Parameter counts (num_classes=10) from running the seed's own class once, or, where the seed only
# gives a block, that block verbatim in the named standard layout. A model without an entry fails.
SEED_PARAMS = {
    "lenet5": 62_006,  # 000 LeNet5() (004 LeNet5: same count)
    "alexnet": 35_857_482,  # 000 AlexNet()
    "vgg11": 28_149_514,  # 000 VGG11()
    "vgg11_slim": 9_493_770,  # 004 VGG11()
    "vgg16": 33_646_666,  # 001 VGGNet()
    "resnet18": 11_173_962,  # 001 ResNet18() / 002 ResNet18() (000, 003, 004 ResNet-18s: same count)
    "resnet34": 21_282_122,  # 001 ResNet34() / 002 ResNet34()
    "resnet50": 23_520_842,  # 001 ResNet50() / 002 ResNet50()
    "plainnet18": 11_000_138,  # 001 PlainNet18()
    "plainnet34": 21_108_298,  # 001 PlainNet(PlainBlock, [3, 4, 6, 3])
    "se_resnet18": 11_261_002,  # 002 ResNet(SEBasicBlock, [2, 2, 2, 2])
    "inception": 583_410,  # 003 SimplifiedInception()
    "mobilenet_v1": 274_250,  # 003 MobileNetV1()
    "simplified_vgg": 8_952_138,  # 003 SimplifiedVGG()
    "modern_cnn": 11_100_042,  # 003 ModernCNN()
    "simple_cnn": 620_362,  # 002 SimpleCNN()
    "vgg_style": 1_806_154,  # 002 VGGStyleCNN()
    # seed block in standard MobileNetV2 layout: 002 MBConv (with its SE) in the paper's table,
    # stem 32 / head 1280 as torchvision (torchvision's SE-free mobilenet_v2: 2_236_682)
    "mobilenet_v2": 4_492_810,
    # seed block in standard CIFAR DenseNet-121 layout: 002 DenseBlock/DenseLayer in Kuang Liu's
    # pytorch-cifar DenseNet121 (growth 32, 6-12-24-16, reduction 0.5, 3x3 stem)
    "densenet121": 6_956_298,
    # seed block in standard ConvNeXt-T layout: 004 ConvNeXtBlock, depths 3-3-9-3, dims 96-...-768,
    # official LN/downsampling/head, 3x3 stride-1 stem for 32x32
    "convnext": 27_825_802,
    # 004's table names EfficientNet-B0 only: torchvision efficientnet_b0(num_classes=10) (strides
    # change no weights; its 1000-class count is 5_288_548)
    "efficientnet_b0": 4_020_358,
    # speed recipe: airbench94's network (widths 64/256/256, 2x2 whitening conv 3->24), 1.97M as published
    "airnet": 1_972_792,
    # 004 mini-project 1 (< 1M parameters at 85%+): designed here, not a seed class
    "compact_resnet": 696_618,
}

ALL = list_models()


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="module", params=ALL)
def name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(name) -> nn.Module:
    """One eval-mode model per name, shared by the per-model tests (pytest groups tests by this
    module-scoped parameter, so one model is alive at a time). Tests that change it copy it."""
    torch.manual_seed(0)
    return create_model(name).eval()


def _x(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32)


def _head(model: nn.Module, num_classes: int) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes][-1]


def test_every_model_has_a_seed_count():
    missing = sorted(set(ALL) - set(SEED_PARAMS))
    assert not missing, f"add the seed's parameter count to SEED_PARAMS for: {missing}"
    assert len(ALL) >= 21


def test_param_count_matches_seed(name, model):
    assert count_params(model) == SEED_PARAMS[name], name
    facts = model_facts(name)
    assert facts["params"] == count_params(model)
    assert facts["gflops"] > 0
    assert facts["name"] == name and facts["source"] == model_source(name)


def test_output_shape(model):
    with torch.no_grad():
        assert model(_x()).shape == (2, 10)


def test_only_the_head_depends_on_num_classes(name):
    # Shapes only, so meta-device models (no storage, no arithmetic) suffice.
    x = torch.empty(2, 3, 32, 32, device="meta")
    models = {}
    for nc in (10, 100):
        with torch.device("meta"):
            models[nc] = create_model(name, num_classes=nc).eval()
        assert models[nc](x).shape == (2, nc)
    shapes10 = {k: p.shape for k, p in models[10].named_parameters()}
    shapes100 = {k: p.shape for k, p in models[100].named_parameters()}
    assert shapes10.keys() == shapes100.keys()
    changed = {k for k in shapes10 if shapes10[k] != shapes100[k]}
    head = _head(models[100], 100)
    head_names = {k for k, p in models[100].named_parameters() if p is head.weight or p is head.bias}
    assert changed == head_names
    per_class = head.in_features + (head.bias is not None)
    assert count_params(models[100]) - count_params(models[10]) == 90 * per_class


def test_backward_gives_finite_grads(name, model):
    model = copy.deepcopy(model).train()
    loss = nn.functional.cross_entropy(model(_x()), torch.tensor([1, 7]))
    loss.backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}.{pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}.{pname} has non-finite gradient"


def test_channels_last_matches_contiguous(model):
    x = _x()
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        out = cl(x.contiguous(memory_format=torch.channels_last))
    scale = ref.abs().max().item()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * max(scale, 1e-3))


def test_bf16_autocast_forward(model):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_x())
    assert out.shape == (2, 10)
    assert torch.isfinite(out.float()).all()


def test_unknown_model_names_closest():
    with pytest.raises(UnknownModelError) as info:
        create_model("resnet19")
    msg = str(info.value)
    assert "resnet19" in msg and "resnet18" in msg and "python -m harness.models" in msg
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownModelError):
        model_source("nope")


def test_list_models_pattern_and_sorting():
    assert list_models("resnet*") == ["resnet18", "resnet34", "resnet50"]
    assert ALL == sorted(ALL)
    assert list_models("no_such_*") == []


def test_register_model_rejects_duplicates_and_missing_source():
    def resnet18(num_classes: int = 10) -> nn.Module:  # clashes with the real factory's name
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet18, source="test")
    assert create_model("resnet18").__class__.__name__ == "ResNet"
    with pytest.raises(ValueError):
        register_model(source="")


def _analytic_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of every Conv2d and Linear, from the module shapes seen by forward hooks."""
    macs = 0

    def hook(m, inputs, out):
        nonlocal macs
        per_image = out.numel() // x.shape[0]
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            macs += per_image * (m.in_channels // m.groups) * kh * kw
        else:
            macs += per_image * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return macs


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v1", "lenet5", "convnext"])
def test_forward_flops_is_twice_the_conv_and_linear_macs(arch):
    model = create_model(arch)
    flops = forward_flops(model)
    assert model.training  # forward_flops restores the mode
    assert flops == 2 * _analytic_macs(model, _x())
    # model_facts counts on a meta-device copy: it must agree with the real CPU model
    assert model_facts(arch)["gflops"] == pytest.approx(flops / 1e9, rel=1e-12)


def test_resnet18_flops_value():
    # 0.5554 GMACs for CIFAR ResNet-18 (the commonly quoted 0.56 GMACs), 2 FLOPs per MAC
    assert model_facts("resnet18")["gflops"] == pytest.approx(1.1108, abs=5e-4)


def test_cli_table_lists_every_model():
    env = dict(os.environ, COLUMNS="200")
    res = subprocess.run([sys.executable, "-m", "harness.models"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    for name in ALL:
        assert name in res.stdout


def test_cli_pattern(capsys):
    assert cli_main(["vgg1*"]) == 0
    out = capsys.readouterr().out
    assert "vgg16" in out and "vgg11_slim" in out and "resnet18" not in out
    assert cli_main(["no_such_model*"]) == 1


@pytest.mark.parametrize("arch", ["simple_cnn", "resnet18", "mobilenet_v2"])
def test_no_graph_breaks(arch):
    torch._dynamo.reset()
    model = create_model(arch).eval()
    explanation = torch._dynamo.explain(model)(_x())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_torch_compile_matches_eager():
    torch._dynamo.reset()
    model = create_model("lenet5").eval()
    x = _x()
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model)(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
