"""The regularisation options of issue 22, each tested by its effect: RandAugment (harness/data/
randaugment.py), random erasing and mixup/cutmix (harness/data/interface.py, mix.py) in both backends,
stochastic depth (`model.drop_path`, harness/models/), soft targets through the loss and the training
accuracy under mixing (harness/training/step.py), the config reaching the loaders and the model
(harness/train.py), and the recipe configs/convnext_cifar.yaml end to end. The loaders' world-size and
resume tests of every option are in tests/test_loaders.py (ALL_OPTIONS); training's, in tests/test_ddp.py
(1 against 2 processes, drop-path's per-rank masks) and tests/test_train.py (resume exactness)."""
from __future__ import annotations

import json
import math
from dataclasses import fields

import numpy as np
import pytest
import torch
import yaml
from conftest import FAST, REPO, make_cifar, run_harness
from test_loaders import BACKENDS, DEVICE, make, to_pixels
from test_models import SEED_PARAMS
from torch import nn
from torchvision.ops import StochasticDepth
from torchvision.transforms.v2 import InterpolationMode, RandAugment

from harness import config as C
from harness.data import randaugment
from harness.data.cifar import random_split
from harness.data.interface import ERASE_RATIO, ERASE_SCALE, Augment, make_plan
from harness.errors import UserError
from harness.models import count_params, create_model, drop_path_models, list_models
from harness.training.checks import check_config
from harness.training.step import cross_entropy, hard_labels, train_step


@pytest.fixture(scope="module")
def images():
    """Natural-looking pixels (smooth gradients with noise) for the pixel-level comparisons: random noise
    would make every interpolation difference look like a large one."""
    rng = np.random.default_rng(0)
    n = 96
    ramp = np.linspace(0, 1, 32)
    base = rng.uniform(0, 255, (n, 1, 1, 3)) * ramp[None, :, None, None] + rng.uniform(0, 255, (n, 1, 1, 3)) \
        * ramp[None, None, :, None]
    x = np.clip(base / 2 + rng.normal(0, 20, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    return x, rng.integers(0, 10, n)


def plan_kw(**augment):
    return dict(seed=5, train=True, drop_last=True, augment=Augment(**augment))


# -- RandAugment -----------------------------------------------------------------------------------------


def test_randaugment_ops_are_torchvisions():
    """The op table is torchvision's RandAugment space: names, order, signed flags and the magnitude at
    every bin (torchvision's private table is the reference here; a torchvision upgrade that changes it
    fails this test)."""
    space = RandAugment._AUGMENTATION_SPACE
    assert randaugment.NAMES == tuple(space)
    for name, magnitudes, signed in randaugment.OPS:
        reference, reference_signed = space[name]
        assert signed == reference_signed, name
        expected = reference(randaugment.BINS, 32, 32)
        assert (magnitudes is None) == (expected is None), name
        if expected is not None:
            assert magnitudes(32) == [float(v) for v in expected], name
    assert randaugment.parse("rand-m9-n2").magnitudes()[randaugment.NAMES.index("Rotate")] == pytest.approx(9.0)


@pytest.mark.parametrize("text, magnitude, ops", [("rand-m9-n2", 9, 2), ("rand-n3-m0", 0, 3), ("rand-m30", 30, 2),
                                                  ("rand", 9, 2)])
def test_randaugment_policy_text(text, magnitude, ops):
    assert randaugment.parse(text) == randaugment.Policy(magnitude, ops)
    assert randaugment.parse("") is None


@pytest.mark.parametrize("text", ["rand-m31-n2", "rand-m9-n0", "rand-m9-mstd0.5", "augmix-m9", "rand-m9-m3", "m9-n2"])
def test_randaugment_bad_policy_is_one_clear_line(text):
    with pytest.raises(UserError, match=r"data.randaugment=.*rand-m9-n2") as e:
        Augment(randaugment=text)
    assert "\n" not in str(e.value)


def test_randaugment_plan_is_reproducible_and_uniform():
    kw = plan_kw(randaugment="rand-m9-n2")
    e0, again, e1 = (make_plan(20000, 100, 0, 1, epoch=e, **kw) for e in (0, 0, 1))
    assert e0.ops.shape == (20000, 2) and e0.negate.shape == (20000, 2)
    # the same seed and epoch: the same ops and signs (so magnitudes) per image; another epoch, other ones
    assert torch.equal(e0.ops, again.ops) and torch.equal(e0.negate, again.negate)
    assert (e0.ops != e1.ops).float().mean() > 0.9  # 13/14 differ by chance
    other_seed = make_plan(20000, 100, 0, 1, epoch=0, **{**kw, "seed": 6})
    assert (e0.ops != other_seed.ops).float().mean() > 0.9
    # uniform over the 14 ops, signs a fair coin: 40,000 draws at a fixed seed, bounds at p = 1e-6
    counts = np.bincount(e0.ops.flatten().numpy(), minlength=14)
    expected = counts.sum() / 14
    assert len(counts) == 14 and ((counts - expected) ** 2 / expected).sum() < 50.0  # 13 dof: p = 1e-6 at 50.7
    assert abs(int(e0.negate.sum()) - 20000) < 5 * 100  # binomial sd sqrt(40000 / 4)
    # turning RandAugment on leaves every other draw as it was
    plain = make_plan(20000, 100, 0, 1, epoch=0, **plan_kw())
    assert all(torch.equal(getattr(plain, f), getattr(e0, f)) for f in ("indices", "dy", "dx", "flip", "cy", "cx"))


def test_randaugment_renders_torchvisions_op_per_image(images):
    """Each rendered image is torchvision's own op (RandAugment's `_apply_image_or_video_transform`, the
    reference) applied to that image alone, with the plan's op and sign, after its crop and flip."""
    x, y = images
    loader = make("torch", x, y, 32, seed=2, augment=Augment(padding=0, randaugment="rand-m9-n2"))
    plan, reference = loader.plan(), RandAugment()
    magnitudes = loader.augment.policy.magnitudes()
    chosen = set()
    for k, (batch, _) in enumerate(loader):
        got = to_pixels(batch)
        for j in range(len(batch)):
            i = 32 * k + j
            image = torch.from_numpy(x[int(plan.indices[i])]).permute(2, 0, 1).to(DEVICE)  # the loader's device
            if plan.flip[i]:
                image = image.flip(-1)
            for op, negate in zip(plan.ops[i].tolist(), plan.negate[i].tolist()):
                name, _, signed = randaugment.OPS[op]
                magnitude = -magnitudes[op] if signed and negate else magnitudes[op]
                image = reference._apply_image_or_video_transform(
                    image, name, magnitude, interpolation=InterpolationMode.NEAREST, fill=reference._fill)
                chosen.add(name)
            assert np.array_equal(got[j], image.permute(1, 2, 0).cpu().numpy()), (i, plan.ops[i].tolist())
    assert len(chosen) == 14  # every op was exercised


# Per op: the largest share of pixels allowed to differ between the backends, and by how many levels
# (measured on these images on the CPU: Color 0.2% by one level, torch fuses its blend's multiply-add;
# Equalize is OpenCV's table in DALI, PIL's in torchvision: up to tens of levels). All others are
# pixel-exact on the CPU. On a GPU (not yet run there) the geometric ops' nearest-neighbour picks may
# differ where a sample point falls on a pixel boundary in one backend's float arithmetic: a few pixels.
BACKEND_TOLERANCE = {"Color": (0.01, 1), "Equalize": (1.0, 255)}
if DEVICE.type == "cuda":
    BACKEND_TOLERANCE.update({op: (0.005, 255) for op in ("ShearX", "ShearY", "Rotate")})


@pytest.mark.parametrize("op", randaugment.NAMES)
def test_randaugment_backends_apply_the_same_op(op, images):
    pytest.importorskip("nvidia.dali")
    x, y = images
    index = randaugment.NAMES.index(op)
    for negate in (False, True):
        rendered = []
        for backend in BACKENDS:
            loader = make(backend, x, y, 48, seed=1, augment=Augment(randaugment="rand-m9-n1"))
            plan = loader.plan()
            plan.ops[:] = index  # every image through this op, with this sign
            plan.negate[:] = negate
            rendered.append(np.concatenate([to_pixels(b) for b, _ in loader]).astype(int))
        diff = np.abs(rendered[0] - rendered[1])
        share, levels = BACKEND_TOLERANCE.get(op, (0.0, 0))
        assert diff.max() <= levels and (diff > 0).mean() <= share, (op, negate, diff.max(), (diff > 0).mean())
        if op == "Equalize":  # a different table, the same operation: far closer than to the input
            assert diff.mean() < 0.5 * np.abs(rendered[0] - to_pixels_of_plain(x, y)).mean()


def to_pixels_of_plain(x, y):
    loader = make("torch", x, y, 48, seed=1, augment=Augment())
    return np.concatenate([to_pixels(b) for b, _ in loader]).astype(int)


# -- random erasing --------------------------------------------------------------------------------------


def test_random_erasing_plan_follows_torchvisions_distribution():
    p, n = 0.4, 20000
    erase = make_plan(n, 100, 0, 1, epoch=3, **plan_kw(random_erasing=p)).erase
    top, left, h, w = erase.T
    on = h > 0
    assert abs(int(on.sum()) - p * n) < 5 * math.sqrt(n * p * (1 - p))  # the probability, 5 sd
    assert torch.equal(on, w > 0)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    area, aspect = (h * w)[on].float() / 1024, h[on].float() / w[on].float()
    # torchvision's ranges, widened by the rounding of h and w to whole pixels
    assert ERASE_SCALE[0] * 0.5 < area.min() and area.max() < ERASE_SCALE[1] * 1.15
    assert ERASE_RATIO[0] * 0.7 < aspect.min() and aspect.max() < ERASE_RATIO[1] / 0.7
    assert abs(float(aspect.log().mean())) < 0.05  # log-uniform ratio: symmetric about 1
    # placement uniform over the positions the rectangle fits: its centre averages the image centre
    assert abs(float((top + h / 2)[on].float().mean()) - 16) < 0.3


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_erasing_erases_the_planned_rectangle_and_never_in_evaluation(backend):
    n, p = 256, 0.5
    pixels = np.full((n, 32, 32, 3), 200, dtype=np.uint8)  # normalises to nonzero in every channel
    labels = np.zeros(n, dtype=np.int64)
    augment = Augment(padding=0, flip=False, random_erasing=p)
    loader = make(backend, pixels, labels, 64, seed=7, augment=augment)
    plan, erased = loader.plan(), 0
    for k, (x, _) in enumerate(loader):
        zero = (x == 0).cpu().numpy()
        assert (zero == zero[:, :1]).all()  # all channels alike
        for j in range(len(x)):
            top, left, h, w = plan.erase[64 * k + j].tolist()
            expected = np.zeros((32, 32), dtype=bool)
            expected[top:top + h, left:left + w] = True
            assert np.array_equal(zero[j, 0], expected), (k, j)
            erased += h > 0
    assert abs(erased - p * n) < 5 * math.sqrt(n * p * (1 - p))
    evaluation = make(backend, pixels, labels, 64, train=False, augment=augment)
    assert all(not (x == 0).any() for x, _ in evaluation)


# -- mixup and cutmix ------------------------------------------------------------------------------------


def unmixed(backend, x, y, batch, seed, epoch=0, **options):
    """The same loader's batches without mixing: the mixing draws have their own stream, so every other
    parameter (crop, flip, RandAugment, erasing) is the same."""
    loader = make(backend, x, y, batch, seed=seed, augment=Augment(**options))
    loader.set_epoch(epoch)
    return list(loader)


def mixed_and_unmixed(backend, images, batch, seed, mixing, **options):
    """A mixing loader's plan and its batches, each beside the same loader's batch without the mixing."""
    x, y = images
    loader = make(backend, x, y, batch, seed=seed, augment=Augment(**mixing, **options), num_classes=10)
    return loader.plan(), list(zip(loader, unmixed(backend, x, y, batch, seed, **options)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixup_images_and_targets_are_the_formula(backend, images):
    G = 32
    plan, pairs = mixed_and_unmixed(backend, images, G, 4, dict(mixup=0.8), cutout=8)
    assert plan.lam is not None and not plan.cut.any()
    for k, ((mixed, targets), (plain, labels)) in enumerate(pairs):
        lam = plan.lam[k * G:(k + 1) * G].to(mixed.device)
        partner = plain.flip(0)  # position i's partner is G - 1 - i
        expected = lam.view(-1, 1, 1, 1) * plain + (1 - lam.view(-1, 1, 1, 1)) * partner
        torch.testing.assert_close(mixed, expected, atol=1e-5, rtol=0)
        onehot = nn.functional.one_hot(labels, 10).float()
        assert targets.dtype == torch.float32 and targets.shape == (G, 10)
        torch.testing.assert_close(targets, lam[:, None] * onehot + (1 - lam[:, None]) * onehot.flip(0),
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(targets.sum(1), torch.ones(G, device=targets.device))
    assert 0.0 < float(plan.lam.min()) and float(plan.lam.max()) < 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_cutmix_pastes_the_box_whose_area_is_lam(backend, images):
    G = 32
    plan, pairs = mixed_and_unmixed(backend, images, G, 9, dict(cutmix=1.0), random_erasing=0.3)
    assert plan.cut.all()
    clipped = square = 0
    for k, ((mixed, targets), (plain, labels)) in enumerate(pairs):
        partner = plain.flip(0)
        for j in range(G):
            i = k * G + j
            y0, y1, x0, x1 = plan.box[i].tolist()
            assert 0 <= y0 <= y1 <= 32 and 0 <= x0 <= x1 <= 32
            lam = float(plan.lam[i])  # recomputed from the clipped box
            assert lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 1024, abs=1e-6)
            inside = torch.zeros(32, 32, dtype=torch.bool, device=mixed.device)
            inside[y0:y1, x0:x1] = True
            assert torch.equal(mixed[j][:, inside], partner[j][:, inside])
            assert torch.equal(mixed[j][:, ~inside], plain[j][:, ~inside])
            onehot = nn.functional.one_hot(labels, 10).float()
            torch.testing.assert_close(targets[j], lam * onehot[j] + (1 - lam) * onehot.flip(0)[j], atol=1e-6, rtol=0)
            if 0 < y0 and y1 < 32 and 0 < x0 and x1 < 32:  # not clipped: timm's square of even side
                assert y1 - y0 == x1 - x0 and (y1 - y0) % 2 == 0
                square += 1
            else:
                clipped += 1
    assert square > 0 and clipped > 0  # both cases exercised


def test_mix_draws_follow_their_distributions():
    n = 20000
    alpha, switch = 0.8, 0.3
    plan = make_plan(n, 100, 0, 1, epoch=0, **plan_kw(mixup=alpha, cutmix=1.0, mix_switch_prob=switch))
    cut, lam = plan.cut, plan.lam.double()
    assert abs(int(cut.sum()) - switch * n) < 5 * math.sqrt(n * switch * (1 - switch))
    mixup = lam[~cut]  # Beta(0.8, 0.8): mean 1/2, variance 1 / (4 (2a + 1))
    sd_mean = math.sqrt(1 / (4 * (2 * alpha + 1)) / len(mixup))
    assert abs(float(mixup.mean()) - 0.5) < 5 * sd_mean
    assert float(mixup.var()) == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)
    # cutmix: the box covers 1 - lam of the image (Beta(1, 1) before the clipping, which only shrinks it)
    assert float((1 - lam[cut]).mean()) < 0.5 and (plan.box[~cut] == 0).all()
    # mixing leaves every other draw as it was
    plain = make_plan(n, 100, 0, 1, epoch=0, **plan_kw())
    assert all(torch.equal(getattr(plain, f), getattr(plan, f)) for f in ("indices", "dy", "dx", "flip", "cy", "cx"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixing_stops_at_mix_stop_epoch(backend, images):
    x, y = images
    augment = Augment(mixup=0.5, cutmix=0.5, mix_stop_epoch=2)
    loader = make(backend, x, y, 32, seed=3, augment=augment, num_classes=10)
    for epoch, mixes in ((1, True), (2, False), (5, False)):
        loader.set_epoch(epoch)
        assert (loader.plan().lam is not None) == mixes
        plain = unmixed(backend, x, y, 32, 3, epoch)
        for (mixed, targets), (image, labels) in zip(loader, plain):
            assert targets.shape == (32, 10)  # soft targets throughout: one-hot once mixing stops
            assert torch.equal(targets, nn.functional.one_hot(labels, 10).float()) != mixes
            assert torch.equal(mixed, image) != mixes


@pytest.mark.parametrize("backend", BACKENDS + ["synthetic"])
def test_targets_are_soft_only_when_mixing_is_configured_and_never_in_evaluation(backend):
    split = random_split(120, seed=2)
    everything = Augment(cutout=8, randaugment="rand-m9-n2", random_erasing=0.5, mixup=0.8, cutmix=1.0)
    kw = dict(synthetic_size=120, num_classes=10) if backend == "synthetic" else dict(num_classes=10)
    train = make(backend, split.images, split.labels, 24, augment=everything, **kw)
    x, targets = next(iter(train))
    assert targets.dtype == torch.float32 and targets.shape == (24, 10) and x.shape == (24, 3, 32, 32)
    torch.testing.assert_close(targets.sum(1), torch.ones(24, device=targets.device))
    _, labels = next(iter(make(backend, split.images, split.labels, 24, augment=Augment(cutout=8), **kw)))
    assert labels.dtype == torch.int64
    if backend == "synthetic":
        return
    # evaluation never augments: the same batches with and without every option
    evaluation = [make(backend, split.images, split.labels, 50, train=False, augment=a, **kw)
                  for a in (everything, Augment())]
    for (u, v), (s, t) in zip(*evaluation, strict=True):
        assert torch.equal(u, s) and torch.equal(v, t) and v.dtype == torch.int64


def test_backends_agree_with_every_option(images):
    """The same images chosen, with the same parameters, in both backends: equal targets (partners and
    weights) and images within the documented rounding (Equalize, which differs by design, replaced by
    Identity in the plan). On 1 process (partners are the batch reversed) and on 2 (rendered by index)."""
    pytest.importorskip("nvidia.dali")
    x, y = images
    options = Augment(cutout=8, randaugment="rand-m9-n2", random_erasing=0.5, mixup=0.8, cutmix=1.0)
    for world in (1, 2):
        batches = {}
        for backend in BACKENDS:
            per_rank = []
            for rank in range(world):
                loader = make(backend, x, y, 48 // world, seed=6, rank=rank, world=world, augment=options)
                loader.set_epoch(1)
                plan = loader.plan()
                for p in (plan, plan.partner):
                    p.ops[p.ops == randaugment.NAMES.index("Equalize")] = 0
                per_rank.append(list(loader))
            batches[backend] = [(torch.cat([r[k][0] for r in per_rank]), torch.cat([r[k][1] for r in per_rank]))
                                for k in range(len(per_rank[0]))]
        for (a, s), (b, t) in zip(batches["torch"], batches["dali"], strict=True):
            assert torch.equal(s, t)
            # Color's one-level differences, which a second op (Contrast, AutoContrast) may stretch: a few
            # levels (one level after normalisation is 1 / (255 * std) < 0.017) on under 1% of the values
            torch.testing.assert_close(a, b, atol=4 * 0.017, rtol=0)
            assert (a - b).abs().gt(1e-5).float().mean() < 0.01


@pytest.mark.parametrize("options, words", [
    (dict(mixup=-1.0), "data.mixup=-1.0"), (dict(cutmix=-0.5), "data.cutmix=-0.5"),
    (dict(mix_switch_prob=1.5), "data.mix_switch_prob=1.5"), (dict(random_erasing=2.0), "data.random_erasing=2.0"),
    (dict(mix_stop_epoch=-1), "data.mix_stop_epoch=-1")])
def test_bad_options_are_one_clear_line(options, words):
    with pytest.raises(UserError) as e:
        Augment(**options)
    assert str(e.value).startswith(words) and "\n" not in str(e.value)


# -- stochastic depth (model.drop_path) ------------------------------------------------------------------

DROP_PATH = drop_path_models()


def test_drop_path_families():
    assert DROP_PATH == ["compact_resnet", "convnext", "densenet121", "efficientnet_b0", "mobilenet_v2", "modern_cnn",
                         "resnet18", "resnet34", "resnet50", "se_resnet18"]


def _drop_modules(model: nn.Module) -> list[StochasticDepth]:
    return [m for m in model.modules() if isinstance(m, StochasticDepth)]


MBCONV = ["efficientnet_b0", "mobilenet_v2"]  # torchvision's EfficientNet rule (the next test)


@pytest.mark.parametrize("name", [n for n in DROP_PATH if n not in MBCONV])
def test_drop_path_rates_rise_linearly_to_the_rate(name):
    with torch.device("meta"):
        model = create_model(name, drop_path=0.3)
    rates = [m.p for m in _drop_modules(model)]  # the first droppable block's rate is 0: no module
    step = 0.3 / len(rates)
    assert rates == pytest.approx([step * (i + 1) for i in range(len(rates))])
    assert rates[-1] == 0.3 and all(m.mode == "row" for m in _drop_modules(model))
    assert count_params(model) == SEED_PARAMS[name]  # stochastic depth has no parameters


def _block_rates(blocks) -> list[float]:
    """The rate of each MBConv block with a residual (ours: `use_residual`, torchvision's: `use_res_connect`)."""
    return [getattr(getattr(b, "drop_path", getattr(b, "stochastic_depth", None)), "p", 0.0)
            for b in blocks if getattr(b, "use_residual", getattr(b, "use_res_connect", False))]


@pytest.mark.parametrize("rate", [None, 0.3])
def test_mbconv_drop_path_rates_are_torchvisions(rate):
    """efficientnet_b0's stochastic depth is torchvision's efficientnet_b0's, block for block: rate * i / 16
    at block i of 16 (at the default 0.2: 0.025 ... 0.175 on the 9 blocks with a residual, blocks 2 ... 14), so the default
    model's training forward is the one it had before model.drop_path existed. mobilenet_v2 (17 blocks)
    follows the same rule."""
    from torchvision.models import efficientnet_b0

    with torch.device("meta"):
        ours = create_model("efficientnet_b0", drop_path=rate)
        theirs = efficientnet_b0(stochastic_depth_prob=0.2 if rate is None else rate)
        v2 = create_model("mobilenet_v2", drop_path=rate)
    expected = _block_rates(b for stage in theirs.features[1:-1] for b in stage)
    assert len(expected) == 9 and expected[0] > 0  # the first block (no residual) carries the 0
    assert _block_rates(ours.blocks) == expected
    if rate is None:
        assert expected == pytest.approx([0.2 * i / 16 for i in (2, 4, 6, 7, 9, 10, 12, 13, 14)])
        assert not _drop_modules(v2)  # mobilenet_v2's default: off
    else:
        residual = [i for i, b in enumerate(v2.blocks) if b.use_residual]
        assert _block_rates(v2.blocks) == [rate * i / 17 for i in residual] and len(residual) == 10


@pytest.mark.parametrize("name", [n for n in DROP_PATH if n != "resnet34"])  # resnet18 has its block
def test_drop_path_is_identity_at_rate_zero_and_in_eval(name):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    default = create_model(name)
    torch.manual_seed(0)
    zero = create_model(name, drop_path=0.0)
    with torch.no_grad():
        if name == "efficientnet_b0":  # its own default is 0.2 (the paper's), not off
            assert _drop_modules(default)[-1].p == 0.2 * 14 / 16 and not _drop_modules(zero)
        else:  # built without any stochastic depth: rate 0 is the default model, forward for forward
            assert not _drop_modules(default)
            for mode in ("train", "eval"):  # train first: both update their BN statistics alike
                outputs = []
                for model in (default, zero):
                    torch.manual_seed(5)
                    outputs.append(model.train(mode == "train")(x))
                assert torch.equal(*outputs), mode
        # identity in eval: a dropping model's eval forward is the rate-0 model's, weights and statistics alike
        dropping = create_model(name, drop_path=0.3)
        dropping.load_state_dict(zero.state_dict())
        assert torch.equal(dropping.eval()(x), zero.eval()(x))


def test_drop_path_drops_p_of_the_samples_in_the_last_block():
    p = 0.3
    model = create_model("resnet18", drop_path=p).train()
    last = _drop_modules(model)[-1]
    assert last.p == p
    seen = {}
    last.register_forward_hook(lambda m, inputs, out: seen.update(x=inputs[0], out=out))
    torch.manual_seed(0)
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    x, out = seen["x"], seen["out"]
    for i in range(len(x)):  # each sample: dropped whole, or kept scaled by 1 / (1 - p)
        assert torch.equal(out[i], torch.zeros_like(x[i])) or torch.allclose(out[i], x[i] / (1 - p))
    # the rate, statistically: 40,000 samples through the same module, bounds at 5 binomial sd
    with torch.no_grad():
        rows = last(torch.ones(40000, 2, 2, 2))
    dropped = int((rows.flatten(1) == 0).all(1).sum())
    assert abs(dropped - p * 40000) < 5 * math.sqrt(40000 * p * (1 - p))
    assert torch.equal(last.eval()(x), x)


def test_drop_path_on_a_model_without_it_is_a_clear_error():
    without = sorted(set(list_models()) - set(DROP_PATH))
    assert "plainnet18" in without and "vgg16" in without
    with pytest.raises(UserError) as e:
        create_model("plainnet18", drop_path=0.1)
    message = str(e.value)
    assert message.startswith("model.drop_path=0.1: plainnet18 has no stochastic depth")
    assert all(name in message for name in DROP_PATH) and "\n" not in message
    assert create_model("plainnet18", drop_path=0.0).__class__.__name__ == "ResNet"  # 0: nothing asked
    for bad in (-0.1, 1.0):
        with pytest.raises(UserError, match=r"a drop rate in \[0, 1\)"):
            create_model("resnet18", drop_path=bad)


def test_drop_path_compiles_without_graph_breaks():
    torch._dynamo.reset()
    model = create_model("resnet18", drop_path=0.2).train()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_drop_path_reaches_the_model_from_the_config():
    """model.drop_path goes through harness/train.py's build_model to create_model; unset, the model is the
    default one (no stochastic depth), built from the same initial weights."""
    from accelerate import Accelerator

    from harness.train import build_model

    acc = Accelerator(cpu=True)
    built = {}
    for rate in (None, 0.2):
        cfg = C.apply_overrides(C.Config(), ["model.name=resnet18", "train.channels_last=false"]
                                + ([f"model.drop_path={rate}"] if rate is not None else []))
        built[rate] = build_model(cfg, 10, acc.device, 1)
    assert not _drop_modules(built[None])
    rates = [m.p for m in _drop_modules(built[0.2])]
    assert rates[-1] == pytest.approx(0.2) and rates == sorted(rates)
    # stochastic depth draws nothing at construction: the same seed gives the same weights
    a, b = (m.state_dict() for m in built.values())
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_options_are_refused_before_the_run_directory_exists(tmp_path):
    """check_config asks Augment and create_model, the code that owns each rule: one line, nothing written."""
    for overrides, words in ((["data.mixup=-1"], "data.mixup=-1.0"), (["data.randaugment=rand-m40"], "data.randaugment"),
                             (["model.name=plainnet18", "model.drop_path=0.1"], "model.drop_path=0.1: plainnet18")):
        with pytest.raises(UserError, match=words):
            check_config(C.apply_overrides(C.Config(), overrides), 1)
    run = tmp_path / "run"
    proc = run_harness(FAST + [f"run.dir={run}", "model.name=vgg16", "model.drop_path=0.2"], check=False)
    assert proc.returncode == 2 and "model.drop_path=0.2: vgg16 has no stochastic depth" in proc.stderr
    assert not run.exists()


# -- the config reaches the loaders ----------------------------------------------------------------------


def test_augment_from_config_reads_every_option():
    """Every Augment field comes from the data config (so an option added to both reaches every loader a
    config builds): each set here to a value other than its default, and read back."""
    values = dict(crop_padding=2, flip=False, cutout=8, flip_mode="alternate", pad_mode="reflect",
                  mixup=0.8, cutmix=1.0, mix_switch_prob=0.3, mix_stop_epoch=5, randaugment="rand-m7-n3",
                  random_erasing=0.25)
    augment = Augment.from_config(C.DataConfig(**values))
    off = Augment.from_config(C.DataConfig(augment=False))  # on its own: beside the others it is refused (below)
    values["augment"] = False
    default = Augment()
    for f in fields(Augment):
        key = Augment.CONFIG_KEYS.get(f.name, f.name)
        assert key in values, f"the test sets no value for {f.name}"
        assert getattr(off if key == "augment" else augment, f.name) == values[key] != getattr(default, f.name), f.name
    with pytest.raises(UserError, match="data.random_erasing=2.0"):
        Augment.from_config(C.DataConfig(random_erasing=2.0))


def test_augment_false_refuses_the_options_it_would_drop():
    """data.augment=false renders no augmentation, so cutout, RandAugment, erasing, mixup or cutmix beside it
    would be dropped without a word: one line naming each and the fix. augment=false alone is fine, and
    the evaluation loader's own Augment(enabled=False) is built from the defaults."""
    for key, value in (("cutout", 8), ("randaugment", "rand-m9-n2"), ("random_erasing", 0.25), ("mixup", 0.8),
                       ("cutmix", 1.0)):
        with pytest.raises(UserError, match=rf"data.augment=false .* data.{key}={value}.* data.augment=true"):
            Augment.from_config(C.DataConfig(augment=False, **{key: value}))
    with pytest.raises(UserError, match="data.mixup=0.8, data.cutmix=1.0"):
        check_config(C.apply_overrides(C.Config(), ["data.augment=false", "data.mixup=0.8", "data.cutmix=1.0"]), 1)
    assert not Augment.from_config(C.DataConfig(augment=False)).enabled
    split = random_split(64, seed=0)
    loader = make("torch", split.images, split.labels, 16, train=False, augment=Augment(cutout=8, mixup=0.8))
    assert not loader.augment.enabled and loader.augment.padding == 4


# -- soft targets through the loss -----------------------------------------------------------------------


def _mixed(y: torch.Tensor, y2: torch.Tensor, lam: torch.Tensor, k: int) -> torch.Tensor:
    """Soft targets as the loader makes them (mix.mix_targets' formula, written out)."""
    onehot = lambda t: nn.functional.one_hot(t, k).float()  # noqa: E731
    return lam[:, None] * onehot(y) + (1 - lam[:, None]) * onehot(y2)


def _soft_targets(n: int, k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random labels, partners' labels, weights and their mixed targets."""
    y, y2 = torch.randint(0, k, (n,), generator=g), torch.randint(0, k, (n,), generator=g)
    lam = torch.rand(n, generator=g)
    return y, y2, lam, _mixed(y, y2, lam, k)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_soft_target_loss_is_the_formula(eps):
    """The loss of mixed targets with label smoothing eps is timm's SoftTargetCrossEntropy on its
    mixup_target(smoothing=eps): each one-hot smoothed ((1 - eps) onehot + eps / C), then mixed; and its
    gradient is (softmax - target) / B."""
    k, n = 10, 64
    g = torch.Generator().manual_seed(3)
    y, y2, lam, t = _soft_targets(n, k, g)
    logits = (3 * torch.randn(n, k, generator=g)).requires_grad_()
    loss = cross_entropy(eps)(logits, t)
    smooth = lambda labels: nn.functional.one_hot(labels, k).float() * (1 - eps) + eps / k  # noqa: E731
    target = lam[:, None] * smooth(y) + (1 - lam[:, None]) * smooth(y2)  # timm's mixup_target
    expected = (-target * torch.log_softmax(logits.detach().double(), 1)).sum(1).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    grad = (torch.softmax(logits.detach().double(), 1) - target) / n
    torch.testing.assert_close(logits.grad.double(), grad, atol=1e-7, rtol=1e-5)
    # a one-hot soft target is the integer label: the same loss (one-hot rows after mix_stop_epoch)
    onehot, logits = nn.functional.one_hot(y, k).float(), logits.detach()
    assert float(cross_entropy(eps)(logits, onehot)) == pytest.approx(float(cross_entropy(eps)(logits, y)), rel=1e-6)


def test_integer_labels_keep_their_loss_bit_for_bit():
    """The warm-up run, the benchmark and every run without mixing take the integer path: the very call
    they made before soft targets existed (train_step's stats included)."""
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(32, 3, 4, 4, generator=g), torch.randint(0, 10, (32,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 10))
    logits = model(x)
    reference = nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    assert torch.equal(cross_entropy(0.1)(logits, y), reference)
    stats = train_step(model, x, y, None, cross_entropy(0.1))
    assert torch.equal(stats, torch.stack([reference.detach() * 32, (logits.argmax(1) == y).sum().float()]))


def test_training_accuracy_under_mixing_counts_the_dominant_class():
    """With soft targets "correct" is the prediction naming the target's largest class: the image's own
    class when lam > 1/2, its partner's when lam < 1/2; with one-hot targets it is plain accuracy."""
    k, n = 10, 200
    g = torch.Generator().manual_seed(5)
    y, y2, lam, _ = _soft_targets(n, k, g)
    lam[:50] = 0.9  # the first quarter: the image's own class dominates; the second: the partner's
    lam[50:100] = 0.1
    t = _mixed(y, y2, lam, k)
    dominant = torch.where(y == y2, y, torch.where(lam > 0.5, y, y2))
    assert torch.equal(hard_labels(t), dominant) and torch.equal(hard_labels(y), y)

    class Fixed(nn.Module):  # predicts a chosen class per image, whatever the input
        def __init__(self, classes):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))
            self.logits = nn.functional.one_hot(classes, k).float() * 5

        def forward(self, x):
            return self.logits + self.w * x.flatten(1)[:, :1]

    x = torch.zeros(n, 1)
    for predicted in (y, y2, dominant):
        stats = train_step(Fixed(predicted), x, t, None)
        assert int(stats[1]) == int((predicted == dominant).sum())
        with torch.no_grad():
            loss = float(cross_entropy()(Fixed(predicted)(x), t))
        assert float(stats[0]) == pytest.approx(loss * n, rel=1e-6)
    assert int(train_step(Fixed(dominant), x, t, None)[1]) == n  # the dominant class scores every image
    assert int(train_step(Fixed(y), x, t, None)[1]) < n  # the own class does not, where the partner dominates


# -- the recipe ------------------------------------------------------------------------------------------

RECIPE = "configs/convnext_cifar.yaml"


def test_recipe_turns_every_option_on():
    cfg = C.load(C.Config, REPO / RECIPE)
    augment = Augment.from_config(cfg.data)
    assert augment.mixup > 0 and augment.cutmix > 0 and augment.policy and augment.random_erasing > 0
    assert cfg.model.name in drop_path_models() and cfg.model.drop_path > 0
    assert cfg.train.label_smoothing > 0 and cfg.optim.name == "adamw" and cfg.optim.schedule == "cosine"
    assert 0 < cfg.optim.warmup_epochs < cfg.train.epochs


@pytest.mark.slow
def test_recipe_smoke_runs_end_to_end_with_top5(tmp_path):
    """configs/convnext_cifar.yaml as written (convnext, every option on), shrunk to 2 epochs of 2 steps on
    tiny generated CIFAR files, fp32 eager on the CPU; the mixing stops after the first epoch."""
    root = make_cifar(tmp_path / "data", "bin", n_train=64, n_test=32, learnable=True)
    run = tmp_path / "run"
    run_harness(["--config", RECIPE, f"data.root={root}", f"run.dir={run}", "data.verify=structure",
                 "run.wandb=false", "run.progress=false", "train.precision=fp32", "train.compile=false",
                 "train.batch_size=8", "data.limit_train=16", "train.epochs=2", "data.mix_stop_epoch=1",
                 "train.eval_batch_size=32", "run.log_every=1"], timeout=500)
    s = json.loads((run / "summary.json").read_text())
    assert s["model"] == "convnext" and s["steps"] == 4 and s["epochs"] == 2
    assert s["test_images"] == 32 and s["test_top5"] is not None and s["test_acc"] <= s["test_top5"] <= 1
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["drop_path"] == 0.1 and saved["train"]["label_smoothing"] == 0.1
    assert {k: saved["data"][k] for k in ("mixup", "cutmix", "randaugment", "random_erasing")} == \
        {"mixup": 0.8, "cutmix": 1.0, "randaugment": "rand-m9-n2", "random_erasing": 0.25}
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert len(epochs) == 2 and all(math.isfinite(r["train_loss"]) and 0 <= r["train_acc"] <= 1 for r in epochs)
    assert all(r["test_top5"] is not None for r in epochs)
