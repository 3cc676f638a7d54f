"""The architecture study (issue 15): gradient flow, inspection, fine-tuning, the < 1M-parameter design and
the seeds' sweeps. Real models and real (tiny) training runs on CPU; the full studies run on a GPU
(docs/study.md)."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import FAST, REPO, learnable_split, make_cifar, run_harness
from harness import config as C
from harness.training import finetune
from harness.training.checks import check_config
from harness.training.freeze import Freezer
from harness.data.cifar import Dataset, random_split, select_classes
from harness.training.gradflow import GradNorms, norms_once, weight_layers
from harness.training.optim import build_optimizer
from harness.models import count_params, create_model, list_models

# ----------------------------------------------------------------------------------------------------
# gradient flow


def _depth_spread(name: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """log(gradient norm of the first conv / that of the last conv) of the main path at initialisation."""
    torch.manual_seed(0)
    rows = norms_once(create_model(name), x, y)
    convs = [norm for layer, _, norm in rows if "shortcut" not in layer and layer != "fc"]
    return math.log(convs[0] / convs[-1])


def test_plain_net_gradient_norms_change_with_depth_far_more_than_a_resnets():
    """001's gradient-flow comparison at initialisation. Measured (seeds 0-2, batch 8): from the last conv
    back to the first, plainnet34's weight-gradient norm grows ~100x (log 4.6-4.8), resnet34's ~10x
    (log 2.3-2.4): with BN and no skips the gradient is unstable across depth (here it explodes toward the
    input, as mean-field analyses of deep BN nets predict); the identity paths keep it nearly flat."""
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    plain, res = _depth_spread("plainnet34", x, y), _depth_spread("resnet34", x, y)
    assert plain > 1.5 * res and plain - res > 1.0, (plain, res)


def test_weight_layers_are_in_forward_order():
    model = create_model("resnet18")
    names = [n for n, _ in weight_layers(model)]
    assert names[0] == "conv1" and names[-1] == "fc" and len(names) == 21
    # a block's shortcut runs on the block's input, but registration puts it after conv2; forward order is
    # conv1, conv2, shortcut (the hook order) and every conv of layer1 precedes layer2's
    assert names.index("layer2.0.conv1") < names.index("layer2.0.shortcut.0") < names.index("layer3.0.conv1")
    assert max(i for i, n in enumerate(names) if n.startswith("layer1")) < names.index("layer2.0.conv1")


def test_grad_norms_accumulate_on_the_device_and_average_at_read():
    torch.manual_seed(0)
    model = create_model("lenet5")
    tracker = GradNorms(model)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    expected = []
    for _ in range(3):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x * (1 + len(expected))), y).backward()
        expected.append([m.weight.grad.norm().item() for _, m in weight_layers(model)])
        tracker.accumulate()
    rows = tracker.read()
    assert [r[1] for r in rows] == list(range(len(rows)))
    assert [r[2] for r in rows] == pytest.approx(np.mean(expected, axis=0).tolist(), rel=1e-5)
    assert tracker.steps == 0 and tracker.sum.abs().sum() == 0  # reset after the read


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_cifar(tmp_path_factory.mktemp("study") / "data", "bin", n_train=320, n_test=160, learnable=True)


def test_training_logs_grad_norms(data, tmp_path):
    run = tmp_path / "run"
    run_harness(FAST + [f"data.root={data}", f"run.dir={run}", "train.log_grad_norms=true", "run.log_every=3"])
    rows = [json.loads(line) for line in (run / "grad_norms.jsonl").read_text().splitlines()]
    steps = 320 // 32
    assert [r["step"] for r in rows] == [3, 6, 9, 10]  # every log interval and the last step
    assert sum(r["steps"] for r in rows) == steps
    names = [n for n, _, _ in rows[0]["layers"]]
    assert names == [n for n, _ in weight_layers(create_model("simple_cnn"))]
    assert all(v > 0 and math.isfinite(v) for r in rows for _, _, v in r["layers"])


# ----------------------------------------------------------------------------------------------------
# inspection


def test_inspect_writes_filters_maps_confusion_and_mistakes(data, tmp_path):
    run, out = tmp_path / "run", tmp_path / "inspect"
    run_harness(FAST + [f"data.root={data}", f"run.dir={run}", "train.epochs=2"])
    run_harness([str(run), f"out={out}"], module="harness.inspect")
    for name in ("filters.png", "feature_maps.png", "confusion.png", "misclassified.png", "inspect.md"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "confusion.csv") as f:
        rows = list(csv.reader(f))[1:]
    counts = np.array([[int(v) for v in r[1:]] for r in rows])
    assert counts.shape == (10, 10) and counts.sum() == 160  # every test image once
    summary = json.loads((run / "summary.json").read_text())
    # the same weights on the same images: inspect's accuracy is the run's (a near-tie may flip one image)
    assert abs(np.trace(counts) / 160 - summary["test_acc"]) <= 1 / 160
    shown = re.search(r"Test accuracy ([0-9.]+)% on (\d+) images", (out / "inspect.md").read_text())
    assert float(shown[1]) == pytest.approx(100 * np.trace(counts) / 160, abs=0.006) and shown[2] == "160"


# ----------------------------------------------------------------------------------------------------
# fine-tuning


def test_select_classes_keeps_and_relabels():
    s = random_split(200, 10, 0)
    ds = select_classes(Dataset("cifar10", s, s, 10, [f"c{i}" for i in range(10)], "x"), [7, 5])
    assert ds.num_classes == 2 and ds.classes == ["c7", "c5"]
    assert len(ds.train) == int(((s.labels == 7) | (s.labels == 5)).sum())
    assert set(ds.train.labels[s.labels[(s.labels == 7) | (s.labels == 5)] == 7]) == {0}
    with pytest.raises(Exception, match="data.classes"):
        select_classes(ds, [0, 0])


def test_head_freeze_moves_only_the_head_in_process():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = C.load(C.Config, None, ["train.freeze=head"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    assert Freezer(model, cfg.train).apply(0) == ["fc"]
    for _ in range(2):
        torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.randint(0, 5, (4,))).backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    for k, v in before.items():
        if k.startswith("fc."):
            assert not torch.equal(v, after[k]), k
        elif not k.endswith("num_batches_tracked"):  # weights and BN running statistics: bit-equal
            assert torch.equal(v, after[k]), k


def test_gradual_unfreezing_and_layer_lr_decay():
    model = create_model("resnet18")
    cfg = C.load(C.Config, None, ["train.freeze=gradual", "train.unfreeze_epochs=[1,3]", "optim.layer_lr_decay=0.5"])
    freezer = Freezer(model, cfg.train)
    assert [freezer.apply(e) for e in range(4)] == [["fc"], ["layer4", "fc"], ["layer4", "fc"],
                                                   ["layer3", "layer4", "fc"]]
    assert not model.layer2[0].conv1.weight.requires_grad and model.layer2[0].bn1.momentum == 0.0
    assert model.layer3[0].bn1.momentum == 0.1  # unfrozen: its momentum restored
    for p in model.parameters():
        p.requires_grad_(True)
    opt = build_optimizer(model, cfg.optim, 0.1)  # SGD, weight decay 5e-4: each group at 0.1 x its lr_scale
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert scale[id(model.fc.weight)] == 1.0 and scale[id(model.layer4[0].conv1.weight)] == 0.5
    assert scale[id(model.conv1.weight)] == 0.5**5 and scale[id(model.bn1.weight)] == 0.5**5  # stem = conv1+bn1
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert all(g["weight_decay"] == 5e-4 for g in opt.param_groups)
    assert {g["lr"] for g in opt.param_groups} == {0.1 * 0.5**k for k in range(6)}
    with pytest.raises(C.ConfigError, match="unfreeze_epochs"):
        check_config(C.load(C.Config, None, ["train.freeze=gradual"]), 1)
    with pytest.raises(C.ConfigError, match="DDP"):
        check_config(cfg, 2)


def test_init_from_adapts_torchvision_names_and_skips_other_heads(tmp_path):
    torch.manual_seed(0)
    source = create_model("resnet18", num_classes=1000).state_dict()
    # torchvision's names and its 7x7 ImageNet stem
    tv = {k.replace(".shortcut.", ".downsample."): v for k, v in source.items()}
    tv["conv1.weight"] = torch.randn(64, 3, 7, 7)
    torch.save(tv, tmp_path / "resnet18-imagenet.pth")
    model = create_model("resnet18", num_classes=10)
    text = finetune.apply_init(model, str(tmp_path / "resnet18-imagenet.pth"))
    state = model.state_dict()
    assert torch.equal(state["layer2.0.shortcut.0.weight"], source["layer2.0.shortcut.0.weight"])
    assert state["conv1.weight"].shape == (64, 3, 3, 3) and "conv1.weight (7, 7)->(3, 3)" in text
    assert "fc.weight (1000, 512) vs (10, 512)" in text and not torch.equal(state["fc.bias"], source["fc.bias"][:10])
    with pytest.raises(Exception, match="none of its"):
        finetune.apply_init(create_model("vgg11"), str(tmp_path / "resnet18-imagenet.pth"))


def test_finetune_five_classes_to_the_other_five_head_only(data, tmp_path):
    """Train on classes 0-4, fine-tune on 5-9 with everything but the head frozen: the frozen weights
    (and BN statistics) leave the run bit-equal, the head moves."""
    first, second = tmp_path / "first", tmp_path / "second"
    run_harness(FAST + [f"data.root={data}", f"run.dir={first}", "data.classes=[0,1,2,3,4]"])
    proc = run_harness(FAST + [f"data.root={data}", f"run.dir={second}", "data.classes=[5,6,7,8,9]",
                               f"model.init_from={first}", "train.freeze=head"])
    assert "loaded" in proc.stdout + proc.stderr
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert a.keys() == b.keys() and b["classifier.4.weight"].shape[0] == 5  # a 5-class head both times
    head = [k for k in a if k.startswith("classifier")]
    body = [k for k in a if k.startswith("features") and not k.endswith("num_batches_tracked")]
    assert head and body
    assert all(torch.equal(a[k], b[k]) for k in body), [k for k in body if not torch.equal(a[k], b[k])]
    assert any(not torch.equal(a[k], b[k]) for k in head)
    summary = json.loads((second / "summary.json").read_text())
    assert summary["test_images"] == int(np.isin(learnable_split(160, 10, 1).labels, [5, 6, 7, 8, 9]).sum())


# ----------------------------------------------------------------------------------------------------
# the design challenge and the sweeps


def test_compact_resnet_is_under_one_million_parameters():
    assert count_params(create_model("compact_resnet")) < 1_000_000
    cfg = C.load(C.Config, REPO / "configs" / "compact_resnet.yaml")
    assert cfg.model.name == "compact_resnet" and cfg.data.val_size > 0  # selected on validation


def test_sweeps_repeat_every_run_over_three_seeds():
    from harness import sweep as S

    runs = S.expand(S.load_sweep(REPO / "configs" / "sweeps" / "architectures.yaml"))
    pairs = sorted((r.resolved["model"]["name"], r.resolved["run"]["seed"]) for r in runs)
    assert pairs == sorted((m, s) for m in list_models() for s in (0, 1, 2))
    assert all(r.resolved["data"]["val_size"] > 0 for r in runs)
    runs = S.expand(S.load_sweep(REPO / "configs" / "sweeps" / "degradation.yaml"))
    assert sorted({r.resolved["model"]["name"] for r in runs}) == ["plainnet18", "plainnet34", "resnet18", "resnet34"]
    assert len(runs) == 12 and all(r.resolved["train"]["log_grad_norms"] for r in runs)
    # same recipe: the configs differ only in the model and the seed (and the run's own directory)
    recipes = {json.dumps({k: v for k, v in r.resolved.items() if k not in ("model", "run")}, sort_keys=True)
               for r in runs}
    assert len(recipes) == 1


def test_gradual_unfreezing_in_a_run_shows_in_the_gradient_norms(data, tmp_path):
    """simple_cnn's stages are `features` and `classifier`: the features get no gradient in the first epoch
    and train from epoch 1 (train.unfreeze_epochs=[1]), each stage at its own lr (layer_lr_decay)."""
    run = tmp_path / "run"
    run_harness(FAST + [f"data.root={data}", f"run.dir={run}", "train.epochs=2", "train.freeze=gradual",
                        "train.unfreeze_epochs=[1]", "optim.layer_lr_decay=0.5", "train.log_grad_norms=true",
                        "run.log_every=5"])
    rows = [json.loads(line) for line in (run / "grad_norms.jsonl").read_text().splitlines()]
    per_epoch = 320 // 32
    first = [r for r in rows if r["step"] <= per_epoch]
    later = [r for r in rows if r["step"] > per_epoch]
    assert first and later
    assert all(v == 0 for r in first for name, _, v in r["layers"] if name.startswith("features"))
    assert all(v > 0 for r in first for name, _, v in r["layers"] if name.startswith("classifier"))
    assert all(v > 0 for r in later for _, _, v in r["layers"])


def test_freezer_keeps_what_the_optimiser_froze():
    """optim.freeze_norm_weights freezes BN scales when the optimiser is built; thawing a stage must not
    bring them back."""
    model = create_model("resnet18")
    cfg = C.load(C.Config, None, ["optim.freeze_norm_weights=true", "train.freeze=gradual",
                                  "train.unfreeze_epochs=[0,0,0,0,0]"])
    build_optimizer(model, cfg.optim, 0.1)
    assert Freezer(model, cfg.train).apply(0) == ["conv1+bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert not model.bn1.weight.requires_grad and not model.layer1[0].bn2.weight.requires_grad
    assert model.bn1.bias.requires_grad and model.conv1.weight.requires_grad
