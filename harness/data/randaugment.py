"""RandAugment per image: the policy (`rand-mM-nN`), its op table, the per-image draw and the torch rendering.

RandAugment (Cubuk et al. 2019, arXiv 1909.13719): every training image gets N ops, each chosen uniformly
(with replacement) from the table below, all at one magnitude bin M of 31 (0..30); a signed op's magnitude
is negated on a fair coin. The policy is written as in timm, `rand-m9-n2` (M = 9, N = 2).

The op set, the magnitude of each op at each bin and the arithmetic are torchvision's
(`torchvision.transforms.v2.RandAugment`, 0.29): the 14 ops of `OPS`, nearest-neighbour interpolation and
fill 0 (black) for the geometric ops. tests/test_regularisation.py checks the table against torchvision's
and the rendered images against torchvision's own per-image op.

What torchvision lacks, and this module adds: `v2.RandAugment` draws one op and one sign per call, for the
whole batch. Here the epoch plan draws them per image (`draw`, keyed by (seed, epoch, global position)
like every other parameter), and `apply` renders a batch with torchvision's public functional kernels:
at a fixed magnitude an image's parameter is one of at most two values per op (+ or -), so the batch is
sorted by (op, sign) into at most 23 groups, each rendered by one v2.functional call on a contiguous slice,
then put back in order. Every kernel works per image (no statistic crosses images), so an image's result
does not depend on which images share its batch: N processes render what one does.

The DALI backend renders the same table with DALI's operators (harness/data/dali.py).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from harness.errors import UserError

BINS = 31  # torchvision's num_magnitude_bins


def _linspace(low: float, high: float):
    return lambda size: [float(v) for v in torch.linspace(low, high, BINS)]  # float32, as torchvision


def _posterize_bits(size: int) -> list[float]:
    return [float(v) for v in (8 - (torch.arange(BINS) / ((BINS - 1) / 4))).round().int()]


# (name, magnitude per bin as a function of the image side, or None; signed): torchvision's
# RandAugment._AUGMENTATION_SPACE, in its order (the op index the plan draws is the position here).
OPS = (
    ("Identity", None, False),
    ("ShearX", _linspace(0.0, 0.3), True),
    ("ShearY", _linspace(0.0, 0.3), True),
    ("TranslateX", lambda size: _linspace(0.0, 150.0 / 331.0 * size)(size), True),
    ("TranslateY", lambda size: _linspace(0.0, 150.0 / 331.0 * size)(size), True),
    ("Rotate", _linspace(0.0, 30.0), True),
    ("Brightness", _linspace(0.0, 0.9), True),
    ("Color", _linspace(0.0, 0.9), True),
    ("Contrast", _linspace(0.0, 0.9), True),
    ("Sharpness", _linspace(0.0, 0.9), True),
    ("Posterize", _posterize_bits, False),
    ("Solarize", _linspace(1.0, 0.0), False),
    ("AutoContrast", None, False),
    ("Equalize", None, False),
)
NAMES = tuple(name for name, _, _ in OPS)
SIGNED = torch.tensor([signed for _, _, signed in OPS])


@dataclass(frozen=True)
class Policy:
    magnitude: int  # the bin, 0..30
    num_ops: int  # ops per image

    def magnitudes(self, size: int = 32) -> list[float]:
        """Each op's magnitude at this policy's bin (0.0 for the ops without one), unsigned."""
        return [fn(size)[self.magnitude] if fn else 0.0 for _, fn, _ in OPS]


def parse(text: str) -> Policy | None:
    """`rand-m9-n2` -> Policy(9, 2) (timm's notation: the parts after `rand` in any order; m defaults to
    9 and n to 2, torchvision's defaults); "" -> None (off). Anything else is a UserError naming the form."""
    if not text:
        return None
    parts = text.split("-")
    values = {}
    for part in parts[1:]:
        m = re.fullmatch(r"([mn])(\d+)", part)
        if not m or m.group(1) in values:
            values = None
            break
        values[m.group(1)] = int(m.group(2))
    if parts[0] != "rand" or values is None:
        raise UserError(f"data.randaugment={text!r}: write rand-m<magnitude>-n<ops>, e.g. rand-m9-n2 "
                        f"(magnitude bin 0..{BINS - 1}, ops per image at least 1), or '' for off")
    policy = Policy(values.get("m", 9), values.get("n", 2))
    if not 0 <= policy.magnitude < BINS or policy.num_ops < 1:
        raise UserError(f"data.randaugment={text!r}: the magnitude m is a bin in 0..{BINS - 1} and n at least "
                        f"1, e.g. rand-m9-n2")
    return policy


def draw(g: torch.Generator, length: int, num_ops: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position: `num_ops` op indices into OPS, uniform with replacement, and whether each op's
    magnitude is negated (a fair coin; ignored by the unsigned ops). Shapes (length, num_ops)."""
    ops = torch.randint(0, len(OPS), (length, num_ops), generator=g)
    negate = torch.randint(0, 2, (length, num_ops), generator=g).bool()
    return ops, negate


def _render_op(x: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """torchvision's RandAugment op `name` at `magnitude` (signed) on uint8 (..., 3, H, W) images."""
    nearest = InterpolationMode.NEAREST
    if name == "Identity":
        return x
    if name in ("ShearX", "ShearY"):
        # torchvision's shear: angle atan(magnitude), about the top-left corner
        angle = math.degrees(math.atan(magnitude))
        return F.affine(x, angle=0.0, translate=[0, 0], scale=1.0, interpolation=nearest, fill=None,
                        shear=[angle, 0.0] if name == "ShearX" else [0.0, angle], center=[0, 0])
    if name in ("TranslateX", "TranslateY"):
        shift = [int(magnitude), 0] if name == "TranslateX" else [0, int(magnitude)]  # whole pixels
        return F.affine(x, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], interpolation=nearest,
                        fill=None)
    if name == "Rotate":
        return F.rotate(x, angle=magnitude, interpolation=nearest, fill=None)
    if name == "Brightness":
        return F.adjust_brightness(x, 1.0 + magnitude)
    if name == "Color":
        return F.adjust_saturation(x, 1.0 + magnitude)
    if name == "Contrast":
        return F.adjust_contrast(x, 1.0 + magnitude)
    if name == "Sharpness":
        return F.adjust_sharpness(x, 1.0 + magnitude)
    if name == "Posterize":
        return F.posterize(x, bits=int(magnitude))
    if name == "Solarize":
        return F.solarize(x, threshold=255.0 * magnitude)
    if name == "AutoContrast":
        return F.autocontrast(x)
    if name == "Equalize":
        return F.equalize(x)
    raise ValueError(name)


def apply(x: torch.Tensor, ops: torch.Tensor, negate: torch.Tensor, policy: Policy) -> torch.Tensor:
    """uint8 (B, 3, H, W) images (any strides, on any device) -> each image through its ops, in order.
    `ops` and `negate` are the batch's (B, num_ops) rows of the plan, on the host: the grouping is
    computed there, so nothing waits for the device."""
    magnitudes = policy.magnitudes(x.shape[-1])
    for layer in range(ops.shape[1]):
        op = ops[:, layer]
        key = op * 2 + (negate[:, layer] & SIGNED[op]).long()  # the sign only splits the signed ops
        order = torch.argsort(key, stable=True).to(x.device, non_blocking=True)  # one copy per layer
        counts = torch.bincount(key, minlength=2 * len(OPS)).tolist()
        grouped = x[order]
        out, start = [], 0
        for k, count in enumerate(counts):
            if count:
                name, sign = NAMES[k // 2], -1.0 if k % 2 else 1.0
                out.append(_render_op(grouped[start:start + count], name, sign * magnitudes[k // 2]))
                start += count
        done = torch.cat(out)
        x = torch.empty_like(done)
        x[order] = done  # back to the batch's order
    return x
