"""The speed recipe's methods (docs/speed.md), each checked by its effect: patch whitening, frozen norm
scales and scaled bias lr, decoupled weight decay, Muon, Lookahead, the warm-up-free schedules,
test-time augmentation, the warm-up run, and train.repeats end to end."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness import config as C
from harness.training.lookahead import Lookahead
from harness.models import create_model
from harness.training.muon import Muon, orthogonalize
from harness.training.optim import build_optimizer, lr_at, set_lr
from harness.data.loaders import normalise
from harness.training.whiten import first_conv, init_whitening, patch_covariance
from tests.conftest import FAST, make_cifar, run_harness


def _images(n: int = 300, seed: int = 0) -> np.ndarray:
    """uint8 NHWC images with strongly correlated neighbouring pixels, like photographs."""
    g = np.random.default_rng(seed)
    base = g.normal(size=(n, 8, 8, 3))
    smooth = np.kron(base, np.ones((1, 4, 4, 1)))  # 4x4 blocks: neighbours mostly equal
    smooth += 0.3 * g.normal(size=smooth.shape) + np.array([0.5, -0.2, 0.1])
    return np.clip(128 + 40 * smooth, 0, 255).astype(np.uint8)


def _optim(**kw) -> C.OptimConfig:
    return C.apply_overrides(C.OptimConfig(), [f"{k}={v}" for k, v in kw.items()])


# ---- patch whitening -----------------------------------------------------------------------------


def test_whitened_first_conv_gives_identity_patch_covariance():
    images = _images()
    model = create_model("airnet")
    conv = init_whitening(model, images, eps=1e-9)
    assert conv is model.whiten and not conv.weight.requires_grad  # frozen after whitening
    patches_cov = patch_covariance(normalise(images, torch.float64), (2, 2))
    w = conv.weight.detach().double().reshape(24, -1)
    # the first 12 filters map a patch to decorrelated unit-variance coordinates: W C Wᵀ = I
    torch.testing.assert_close(w[:12] @ patches_cov @ w[:12].T, torch.eye(12, dtype=torch.float64),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(w[12:], -w[:12])  # and their negatives
    # the raw patches were far from white: correlated neighbours
    corr = patches_cov / torch.outer(patches_cov.diag().sqrt(), patches_cov.diag().sqrt())
    assert (corr - torch.eye(12, dtype=torch.float64)).abs().max() > 0.5


def test_whitening_the_conv_output_matches_the_patch_computation():
    images = _images(64)
    model = create_model("airnet").double()
    init_whitening(model, images, eps=1e-9)
    out = F.conv2d(normalise(images, torch.float64), model.whiten.weight)[:, :12]  # no bias: the linear map alone
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    torch.testing.assert_close(flat.T @ flat / len(flat), torch.eye(12, dtype=torch.float64), atol=1e-4, rtol=0)


def test_whitening_any_first_conv_and_its_errors():
    model = create_model("simple_cnn")
    conv = init_whitening(model, _images(32))
    assert conv is first_conv(model) and conv.kernel_size == (3, 3) and not conv.weight.requires_grad
    with pytest.raises(C.UserError, match="no nn.Conv2d with 3 input channels"):
        init_whitening(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)), _images(4))


def test_whitening_bias_trains_early_only():
    from harness.training.whiten import bias_step_limit

    torch.manual_seed(0)
    model = create_model("airnet")
    conv = init_whitening(model, _images(16))
    opt = build_optimizer(model, _optim(bias_lr_scale=0.5, momentum=0.9), lr=0.2,
                          step_limits=bias_step_limit(conv, epochs=2, steps_per_epoch=2))  # 4 steps
    group = next(g for g in opt.param_groups if any(p is conv.bias for p in g["params"]))
    assert group["params"] == [conv.bias] and group["lr_scale"] == 0.5  # its own group, settings kept
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in model.parameters())
    lrs = []
    for step in range(6):
        set_lr(opt, 0.2 * (1 - step / 6), step, peak=0.2)  # the main schedule: linear over 6 steps
        lrs.append(group["lr"])
        if step == 4:
            before = conv.bias.detach().clone()
        F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
        opt.step()
        opt.zero_grad()
    # peak x scale x (1 - step/4): down to 0 at step 4 and after, whatever the main schedule
    assert lrs == pytest.approx([0.1, 0.075, 0.05, 0.025, 0.0, 0.0])
    assert torch.equal(conv.bias.detach(), before)  # no movement once its lr is 0, momentum or not


# ---- norm layers, bias lr, decoupled weight decay --------------------------------------------------


def test_frozen_norm_weights_do_not_move_and_bias_lr_is_scaled():
    torch.manual_seed(0)
    model = create_model("airnet")
    cfg = _optim(freeze_norm_weights="true", bias_lr_scale=64, weight_decay=0, momentum=0)
    opt = build_optimizer(model, cfg, lr=0.01)
    norm = model.block1.norm1
    before_w, before_b = norm.weight.detach().clone(), norm.bias.detach().clone()
    conv_before = model.block1.conv1.weight.detach().clone()
    F.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.arange(8)).backward()
    grad_b, grad_conv = norm.bias.grad.clone(), model.block1.conv1.weight.grad.clone()
    set_lr(opt, 0.01)
    opt.step()
    assert not norm.weight.requires_grad and torch.equal(norm.weight, before_w)
    torch.testing.assert_close(norm.bias.detach(), before_b - 0.64 * grad_b)  # 64 x the lr
    torch.testing.assert_close(model.block1.conv1.weight.detach(), conv_before - 0.01 * grad_conv)


def test_decoupled_weight_decay_is_the_formula_whatever_the_group_lr():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    cfg = _optim(weight_decay=0.01, weight_decay_mode="decoupled", bias_lr_scale=10, momentum=0.9, nesterov="true")
    opt = build_optimizer(lin, cfg, lr=0.5, batch_ratio=2.0)  # the batch doubles the decay per step
    w0 = [p.detach().clone() for p in lin.parameters()]
    for p in lin.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: the step is the decay alone
    lr_t = 0.25  # half-way down the schedule
    set_lr(opt, lr_t)
    opt.step()
    for p, p0 in zip(lin.parameters(), w0):
        # Nesterov's first step moves by (1 + m) x the gradient incl. the decay term: wd_step x lr_t/peak
        expected = p0 * (1 - (1 + 0.9) * 0.01 * 2.0 * lr_t / 0.5)
        torch.testing.assert_close(p.detach(), expected)


def test_nesterov_sgd_update_equals_the_formula():
    torch.manual_seed(0)
    lin = nn.Linear(5, 2, bias=False)
    opt = build_optimizer(lin, _optim(momentum=0.8, nesterov="true", weight_decay=0.1), lr=0.3)
    w0 = lin.weight.detach().clone()
    g1 = torch.randn_like(w0)
    lin.weight.grad = g1.clone()
    opt.step()
    d1 = g1 + 0.1 * w0
    w1 = w0 - 0.3 * (d1 + 0.8 * d1)  # first step: buffer = d1
    torch.testing.assert_close(lin.weight.detach(), w1)
    g2 = torch.randn_like(w0)
    lin.weight.grad = g2.clone()
    opt.step()
    d2 = g2 + 0.1 * w1
    buf = 0.8 * d1 + d2
    torch.testing.assert_close(lin.weight.detach(), w1 - 0.3 * (d2 + 0.8 * buf))


# ---- Muon ------------------------------------------------------------------------------------------


def test_orthogonalize_flattens_the_spectrum():
    torch.manual_seed(0)
    g = torch.randn(64, 64 * 9) * torch.logspace(0, 1, 64)[:, None]  # singular values over a decade
    s_in = torch.linalg.svdvals(g)
    assert s_in.max() / s_in.min() > 10
    s = torch.linalg.svdvals(orthogonalize(g).float())
    assert s.min() > 0.5 and s.max() < 1.5  # Newton-Schulz x3: within ~[0.5, 1.5] (Jordan 2024)


def test_muon_conv_update_is_near_orthogonal_and_the_rest_is_sgd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, bias=False), nn.BatchNorm2d(16), nn.Flatten(), nn.LazyLinear(4))
    model(torch.randn(2, 3, 8, 8))
    opt = build_optimizer(model, _optim(name="muon", muon_lr=0.2, momentum=0.5, nesterov="true", weight_decay=0),
                          lr=0.1)
    assert isinstance(opt, Muon)
    conv, head = model[0].weight, model[3].weight
    F.cross_entropy(model(torch.randn(8, 3, 8, 8)), torch.arange(8) % 4).backward()
    norm_w = conv.detach() * math.sqrt(16) / conv.detach().norm()  # Muon first rescales the filter bank
    head0, head_grad = head.detach().clone(), head.grad.clone()
    set_lr(opt, 0.1)
    opt.step()
    update = ((norm_w - conv.detach()) / 0.2).reshape(16, -1)  # muon_lr, not optim.lr
    gram = update @ update.T  # 16 rows of length 27: near-orthonormal rows
    assert (gram.diag() - 1).abs().max() < 0.5
    off = gram - torch.diag(gram.diag())
    assert off.abs().max() < 0.3
    g = model[0].weight.grad.reshape(16, -1)
    assert (g @ g.T - torch.diag((g @ g.T).diag())).abs().max() / (g @ g.T).diag().max() > off.abs().max()
    torch.testing.assert_close(head.detach(), head0 - 0.1 * (1 + 0.5) * head_grad)  # plain Nesterov SGD


def _reference_muon_step(groups: list[dict], state: dict) -> None:
    """The per-parameter Muon loop that harness/training/muon.py replaced, kept as the reference: one
    tensor at a time, Newton-Schulz on each 2-D matrix on its own."""
    a, b, c = 3.4445, -4.7750, 2.0315

    def orthogonalize_one(g):
        x = g.bfloat16()
        x = x / (x.norm() + 1e-7)
        tall = x.shape[0] > x.shape[1]
        if tall:
            x = x.T
        for _ in range(3):
            A = x @ x.T
            x = a * x + (b * A + c * A @ A) @ x
        return (x.T if tall else x).to(g.dtype)

    with torch.no_grad():
        for group in groups:
            lr, m, nesterov = group["lr"], group["momentum"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["orthogonalize"] and group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                if p not in state:
                    buf = state[p] = g.clone()
                else:
                    buf = state[p].mul_(m).add_(g)
                d = g.add(buf, alpha=m) if nesterov else buf
                if group["orthogonalize"]:
                    p.mul_(math.sqrt(p.shape[0]) / (p.norm() + 1e-12))
                    d = orthogonalize_one(d.reshape(len(d), -1)).view_as(p)
                p.add_(d, alpha=-lr)


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_step_equals_the_per_parameter_loop(nesterov):
    """Foreach momentum, shape-batched Newton-Schulz and torch's fused SGD for the rest give the old
    loop's weights over several steps: airnet's filters (4 shapes, one shared by three banks, one tall
    bank added) under Muon, the 1-D tensors and the head under (Nesterov) SGD with weight decay, the lr
    changing every step as the schedule does."""
    torch.manual_seed(0)
    model = create_model("airnet")
    model.tall = nn.Conv2d(3, 40, 1, bias=False)  # (40, 3): a tall matrix, iterated transposed
    new, old = model, copy.deepcopy(model)
    start = [p.detach().clone() for p in new.parameters()]
    cfg = _optim(name="muon", muon_lr=0.24, muon_momentum=0.6, momentum=0.85, nesterov=str(nesterov).lower(),
                 weight_decay=0.004, weight_decay_mode="decoupled", bias_lr_scale=0.08)
    opt = build_optimizer(new, cfg, lr=1.5)
    assert isinstance(opt, Muon)
    ref_groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [dict(old.named_parameters())[n] for n in _names(new, g["params"])]}
                  for g in opt.param_groups]
    kinds = sorted((g["orthogonalize"], g["weight_decay"] > 0) for g in opt.param_groups)
    assert kinds == [(False, True), (False, True), (True, False)]  # 1-D tensors, the head, the filters
    ref_state: dict = {}
    for step in range(4):
        x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
        for net in (new, old):
            net.zero_grad(set_to_none=True)
            (F.cross_entropy(net(x), y) + net.tall(x).square().mean()).backward()
        lr = 1.5 * (1 - step / 4)
        set_lr(opt, lr)
        for g in ref_groups:
            g["lr"] = lr * g["lr_scale"]
        opt.step()
        _reference_muon_step(ref_groups, ref_state)
        for (name, p), q in zip(new.named_parameters(), old.parameters()):
            # the same arithmetic, summed in another order here and there (a norm, a fused kernel): fp32
            # rounding. Once a filter's inputs differ in their last bit, one element of its bf16 update can
            # round the other way: lr x 2^-8 x |update| (0.24 x 0.004 x 0.1 = 1e-4) is one bf16 step
            tol = 2e-4 if p.ndim == 4 else 1e-6
            torch.testing.assert_close(p, q, rtol=1e-5, atol=tol, msg=lambda m: f"step {step}, {name}: {m}")
    assert all(not torch.equal(p, p0) for p, p0 in zip(new.parameters(), start))  # every tensor trained


def test_muon_falls_back_to_the_eager_iteration_when_compiling_fails():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 6, 6))
    twin = copy.deepcopy(model)
    broken = Muon([{"params": [model[0].weight], "orthogonalize": True}], lr=0.1, compile="no_such_backend")
    eager = Muon([{"params": [twin[0].weight], "orthogonalize": True}], lr=0.1, compile=False)
    x = torch.randn(4, 3, 6, 6)
    for net in (model, twin):
        net(x).square().mean().backward()
    with pytest.warns(UserWarning, match="Muon: compiling the Newton-Schulz iteration failed"):
        broken.step()
    eager.step()
    assert broken.compile is False and torch.equal(model[0].weight, twin[0].weight)


def _names(model: nn.Module, params: list) -> list[str]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return [ids[id(p)] for p in params]


def test_muon_iteration_is_batched_per_shape_and_its_compiled_form_does_not_recompile(monkeypatch):
    """One Newton-Schulz call per filter shape, not per filter bank; under torch.compile (dynamo with the
    'eager' backend here: the guards, without code generation) the lr changing every step and the epochs
    passing compile nothing new after the first step."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from harness.training import muon

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = create_model("airnet")
    opt = build_optimizer(model, _optim(name="muon", muon_lr=0.24, momentum=0.85), lr=1.0)
    opt.compile = "eager"
    calls = []
    real = muon.compiled_newton_schulz("eager")
    monkeypatch.setitem(muon._COMPILED, "eager", lambda x, *a: calls.append(tuple(x.shape)) or real(x, *a))
    for step in range(6):
        model.zero_grad()
        F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
        set_lr(opt, 1.0 / (step + 1))
        if step == 1:  # every shape has been seen: from here on, a recompilation is an error
            graphs = counters["stats"]["unique_graphs"]
            monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
        opt.step()
    per_step = calls[:len(calls) // 6]
    # airnet's 7 filter banks (unwhitened, so the first trains too): 5 shapes, (256, 2304) three times
    # whiten (24, 12) is tall: it is iterated transposed, (12, 24)
    assert sorted(per_step) == [(1, 12, 24), (1, 64, 216), (1, 64, 576), (1, 256, 576), (3, 256, 2304)]
    assert 1 <= graphs <= 2  # dynamic shapes: one graph, and one for batches of a single matrix
    assert counters["stats"]["unique_graphs"] == graphs


# ---- Lookahead -------------------------------------------------------------------------------------


def test_lookahead_slow_weights_are_the_interpolation_after_k_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    la = Lookahead(model, every=2, decay=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    slow0 = [t.clone() for t in la.slow]
    fast = None
    total = 4
    for step in range(1, 3):
        F.mse_loss(model(torch.randn(5, 3)), torch.zeros(5, 3)).backward()
        opt.step()
        opt.zero_grad()
        fast = [t.detach().clone() for t in model.state_dict().values() if t.is_floating_point()]
        la.step(step, total)
    d = 0.5 * (2 / 4) ** 3  # the decay at step 2 of 4
    for s0, f, s, now in zip(slow0, fast, la.slow, (t for t in model.state_dict().values() if t.is_floating_point())):
        torch.testing.assert_close(s, d * s0 + (1 - d) * f)  # slow <- decay x slow + (1 - decay) x fast
        torch.testing.assert_close(now, s)  # and the fast weights restart from it
    assert not torch.equal(slow0[0], la.slow[0])
    # the last step leaves the model on the slow weights, even off the k-step grid
    model[0].weight.data.add_(1.0)
    la.step(3, 3)
    torch.testing.assert_close(model[0].weight.detach(), la.slow[0])


# ---- schedules -------------------------------------------------------------------------------------


def test_warmup_free_schedules():
    # linear without warm-up: the peak at step 0, straight down to the floor
    assert lr_at(0, 100, 0, 2.0, "linear") == 2.0
    assert lr_at(50, 100, 0, 2.0, "linear") == pytest.approx(1.0)
    assert lr_at(100, 100, 0, 2.0, "linear", 0.1) == pytest.approx(0.2)
    # triangular (airbench94): 0.2 x peak at step 0, the peak at 23% of the steps, min_lr_ratio at the end
    assert lr_at(0, 100, 0, 1.0, "triangular") == pytest.approx(0.2)
    assert lr_at(23, 100, 0, 1.0, "triangular") == pytest.approx(1.0)
    assert lr_at(11, 100, 0, 1.0, "triangular") == pytest.approx(0.2 + 0.8 * 11 / 23)
    assert lr_at(100, 100, 0, 1.0, "triangular", 0.07) == pytest.approx(0.07)
    assert lr_at(23 + 77 // 2, 100, 0, 1.0, "triangular", 0.0) == pytest.approx(1 - 38 / 77)


# ---- test-time augmentation ------------------------------------------------------------------------


class _Accelerator:  # the few Accelerator members evaluate() uses, for one CPU process
    device = torch.device("cpu")
    num_processes = 1

    def autocast(self):
        return torch.autocast("cpu", enabled=False)

    def reduce(self, t, op):
        return t


def test_tta_views_survive_a_model_that_reuses_its_output_buffer():
    """CUDA-graph compile modes return each call's output in a buffer the graph owns, overwritten by the
    next call: this model does the same on the CPU. Each view must be copied out before the next runs."""
    from harness.training.evaluate import tta_logits

    class OneBuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.out = create_model("simple_cnn").eval(), None

        def forward(self, x):
            y = self.net(x)
            if self.out is None:
                self.out = torch.empty_like(y)
            return self.out.copy_(y)

    torch.manual_seed(0)
    model, x = OneBuffer(), torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for tta in ("none", "flip", "flip_translate"):
            honest = tta_logits(model.net, x, tta)
            torch.testing.assert_close(tta_logits(model, x, tta), honest)
        assert not torch.allclose(honest, model.net(x.flip(3)))  # the views do differ


def test_tta_logits_are_the_mean_over_the_views_by_hand():
    from harness.training.evaluate import evaluate, tta_logits

    torch.manual_seed(0)
    model = create_model("simple_cnn").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        views = {"x": x, "x_m": x.flip(3)}
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        views["a"], views["b"] = padded[:, :, 0:32, 0:32], padded[:, :, 2:34, 2:34]
        views["a_m"], views["b_m"] = views["a"].flip(3), views["b"].flip(3)
        out = {k: model(v) for k, v in views.items()}
        torch.testing.assert_close(tta_logits(model, x, "none"), out["x"])
        torch.testing.assert_close(tta_logits(model, x, "flip"), (out["x"] + out["x_m"]) / 2)
        by_hand = (2 * out["x"] + 2 * out["x_m"] + out["a"] + out["a_m"] + out["b"] + out["b_m"]) / 8
        torch.testing.assert_close(tta_logits(model, x, "flip_translate"), by_hand)
        # a one-pixel shift is a different image: the translated views do change the logits
        assert not torch.allclose(by_hand, (out["x"] + out["x_m"]) / 2)
    # evaluate() scores the averaged logits: its loss is the cross-entropy of the 6-view mean
    y = torch.tensor([0, 1, 2, 3])
    res = evaluate(model, [(x, y)], _Accelerator(), 10, "flip_translate")
    assert res["loss"] == pytest.approx(F.cross_entropy(by_hand, y).item(), rel=1e-5)
    assert res["acc"] == (by_hand.argmax(1) == y).float().mean().item()
    assert evaluate(model, [(x, y)], _Accelerator(), 10, "flip")["loss"] == pytest.approx(
        F.cross_entropy((out["x"] + out["x_m"]) / 2, y).item(), rel=1e-5)  # the pair alone


# ---- through the loop: warm-up run, repeats, the recipe ---------------------------------------------


def _summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_warmup_run_changes_nothing_but_the_clock(tmp_path):
    root = tmp_path / "data"
    make_cifar(root)
    common = [*FAST, f"data.root={root}", "train.max_steps=4", "optim.lr=0.05"]
    run_harness([*common, f"run.dir={tmp_path / 'plain'}"])
    run_harness([*common, f"run.dir={tmp_path / 'warm'}", "train.warmup_run=true"])
    plain, warm = _summary(tmp_path / "plain"), _summary(tmp_path / "warm")
    # the throwaway steps are undone: same final weights (checksums), accuracy and steps
    assert warm["param_checksums"] == pytest.approx(plain["param_checksums"], rel=1e-6)
    assert warm["test_acc"] == plain["test_acc"] and warm["steps"] == plain["steps"] == 4
    assert warm["warmup_run"] is True and warm["time_s"] >= warm["train_s"] > 0


def test_warmup_run_puts_the_gradient_scaler_back():
    """fp16's gradient scaler moves its scale with every step (here x2 a step: growth_interval=1); the
    throwaway steps must leave it where it was, as the weights and the optimiser's state. A scaler on the
    CPU stands in for the GPU's: accelerate drives it the same way (backward scales, the step unscales and
    updates)."""
    from accelerate import Accelerator

    from harness.training.warmup import warm_up

    accelerator = Accelerator(cpu=True)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    model = torch.nn.Linear(4, 3)
    net, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))

    class Batches:
        def set_epoch(self, epoch): ...

        def load_state_dict(self, state): ...

        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            return iter([(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(5)])

    before = model.weight.detach().clone()
    assert warm_up(net, model, optimizer, Batches(), accelerator, steps=3) == 3
    assert accelerator.scaler.get_scale() == 1024.0 and torch.equal(model.weight, before)


def test_speed_recipe_repeats_write_statistics(tmp_path):
    """configs/speed94.yaml at smoke size (airnet, whitening, Muon, frozen BN scales, TTA, warm-up run,
    alternating flip, reflect padding), twice, on data with a test_exact.json beside it: repeats.json holds
    both runs and their statistics: accuracy on the whole test set and on the subset, time without and
    with the final evaluation."""
    root = tmp_path / "data"
    make_cifar(root)
    (root / "test_exact.json").write_text(json.dumps({"dataset": "cifar10", "split": "test",
                                                      "indices": list(range(50))}))
    out = tmp_path / "speed"
    proc = run_harness(["--config", "configs/speed94.yaml", f"data.root={root}", "data.verify=structure",
                        "train.precision=fp32", "train.compile=false", "train.batch_size=64", "train.epochs=1",
                        "train.max_steps=2", "train.eval_batch_size=64", "run.wandb=false", "run.progress=false",
                        "train.repeats=2", f"run.dir={out}"])
    record = json.loads((out / "repeats.json").read_text())
    assert record["n"] == 2 and [r["seed"] for r in record["runs"]] == [0, 1]
    for k, r in enumerate(record["runs"]):
        s = _summary(out / f"seed-{k}")
        assert r["test_acc"] == s["test_acc"] and r["time_s"] == s["time_s"] > 0
        assert s["model"] == "airnet" and s["steps"] == 2
        # airbench's clock: the final 6-view evaluation on top of training, its graph warmed up beforehand
        assert r["time_s_with_final_eval"] == s["time_s_with_final_eval"] > s["time_s"]
        assert r["test_subset_acc"] == s["test_subset_acc"] and r["test_subset_images"] == s["test_subset_images"] == 50
    assert record["test_acc"]["n"] == record["test_subset_acc"]["n"] == record["time_s_with_final_eval"]["n"] == 2
    assert record["test_subset"] == str(root / "test_exact.json") and record["test_subset_images"] == 50
    assert record["test_acc"]["mean"] == pytest.approx(sum(r["test_acc"] for r in record["runs"]) / 2)
    # two runs: the median and the spread, no interval (harness.stats computes none below 3 runs)
    assert record["time_s"]["min"] <= record["time_s"]["median"] <= record["time_s"]["max"]
    assert record["time_s"]["ci95_low"] is None and record["test_acc"]["ci95_low"] is None
    assert "repeats: test accuracy" in proc.stdout and "n = 2: too few runs for an interval" in proc.stdout
    # the whitening layer was written from the data and stayed frozen: identical in both seeds' weights
    from harness.models import load_run

    w = [load_run(out / f"seed-{k}").whiten.weight for k in range(2)]
    torch.testing.assert_close(w[0], w[1])


def test_repeats_record_is_written_after_every_run(tmp_path):
    """A job stopped during run 3 of 3 (train.py leaves with SystemExit(128 + signal) on SIGTERM) keeps
    a valid repeats.json of the two runs it finished."""
    from harness.training.repeats import run_repeats

    seen = []

    def main(argv):
        seed = int(next(a for a in reversed(argv) if a.startswith("run.seed="))[len("run.seed="):])
        if len(seen) == 2:
            on_disk = json.loads((tmp_path / "repeats.json").read_text())
            assert on_disk["n"] == 2 and on_disk["complete"] is False  # already there before run 3 starts
            raise SystemExit(143)
        seen.append(seed)
        return {"test_acc": 0.9 + seed / 100, "time_s": 3.0 + seed, "device": "cpu"}

    cfg = C.load(C.Config, None, ["train.repeats=3", "run.seed=5"])
    with pytest.raises(SystemExit):
        run_repeats(main, ["train.repeats=3"], cfg, tmp_path)
    record = json.loads((tmp_path / "repeats.json").read_text())
    assert seen == [5, 6] and [r["seed"] for r in record["runs"]] == [5, 6]
    assert (record["n"], record["n_planned"], record["complete"]) == (2, 3, False)
    assert record["test_acc"]["n"] == 2 and record["test_acc"]["mean"] == pytest.approx(0.955)
    assert record["time_s"]["median"] == pytest.approx(8.5)


def test_speed_recipe_under_two_process_ddp_keeps_ranks_identical(tmp_path):
    """Whitening, Muon, Lookahead and the warm-up run under DDP (gloo, 2 CPU processes): both ranks end
    with bit-identical weights (DDP swaps parameter storage: Lookahead must follow it)."""
    import sys

    from tests.conftest import REPO

    root = tmp_path / "data"
    make_cifar(root)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(REPO / "launch/accelerate/cpu_ddp.yaml"), str(REPO / "harness/train.py")]
    run_harness(["--config", "configs/speed94.yaml", f"data.root={root}", "data.verify=structure",
                 "train.precision=fp32", "train.compile=false", "train.batch_size=64", "train.epochs=1",
                 "train.max_steps=3", "train.eval_batch_size=64", "train.lookahead_every=2", "run.wandb=false",
                 "run.progress=false", f"run.dir={tmp_path / 'ddp'}"], launcher=launcher, timeout=400)
    s = _summary(tmp_path / "ddp")
    assert s["world_size"] == 2 and s["steps"] == 3
    a, b = s["param_checksums"]
    assert a == b


@pytest.mark.parametrize("override, needle", [("train.repeats=0", "train.repeats=0: must be at least 1"),
                                              ("train.lookahead_every=-1", "train.lookahead_every"),
                                              ("optim.muon_momentum=1.0", "optim.muon_momentum=1.0: a fraction"),
                                              ("optim.bias_lr_scale=-2", "optim.bias_lr_scale")])
def test_speed_options_are_checked_before_the_run(override, needle):
    from harness.training.checks import check_config

    with pytest.raises(C.ConfigError, match=needle.replace(".", r"\.")):
        check_config(C.load(C.Config, None, [override]), world=1)


def test_repeats_under_two_process_ddp_run_every_seed(tmp_path):
    """train.repeats=2 on 2 gloo processes: each repeat's Accelerator reuses the job's process group (ending
    it after the first run made the second fail on every rank), and repeats.json holds both runs."""
    import sys

    from tests.conftest import REPO

    root = tmp_path / "data"
    make_cifar(root)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(REPO / "launch/accelerate/cpu_ddp.yaml"), str(REPO / "harness/train.py")]
    run_harness([*FAST, f"data.root={root}", "train.max_steps=2", "train.repeats=2", f"run.dir={tmp_path / 'rep'}"],
                launcher=launcher, timeout=400)
    record = json.loads((tmp_path / "rep" / "repeats.json").read_text())
    assert record["n"] == 2 and record["complete"] is True and [r["seed"] for r in record["runs"]] == [0, 1]
    for k in range(2):
        assert _summary(tmp_path / "rep" / f"seed-{k}")["world_size"] == 2
