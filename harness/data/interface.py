"""The loader interface every backend implements: the epoch plan and the `Loader` base class.

Every backend yields `(images, targets)` already on the training device: images normalised, NCHW in the
dtype the model runs in, channels_last when asked. Targets are int64 labels, except for a training loader
with mixup or cutmix on (`Augment.soft_targets`): then float32 (B, num_classes) soft targets, already
mixed (lam * onehot(y_i) + (1 - lam) * onehot(y_j); one-hot in the epochs after `mix_stop_epoch`), and
label smoothing stays the loss's job. Evaluation loaders never augment and always yield int64 labels;
their batches pad the last batch to full size with label -1 (never counted), so every rank runs the same
number of equal-shape batches (one compiled graph, matching DDP collectives).

What a backend sees of randomness is an `EpochPlan`: the rank's sample indices and every augmentation
parameter (crop offsets, flips, cutout centres, RandAugment ops and signs, erased rectangles, mixing
weights, cutmix boxes, and the mixing partners' own parameters) for one epoch. A backend only renders
batch k of it, so the torch and DALI backends give the same batches (up to float rounding; with
RandAugment, DALI's Equalize and Color differ in pixel values: dali.py) and a loader's checkpoint state
is (epoch, batch).

Order of the per-image operations, in both backends: crop, flip, RandAugment (uint8), normalise, cutout,
random erasing, then mixup/cutmix with the partner's image rendered the same way (mix.py).

World-size invariance (training). With B images per process and `world` processes, the global batch
is G = B * world. One permutation of the data set per (seed, epoch); global batch k is positions
[k*G, (k+1)*G) of it, and rank r renders positions [k*G + r*B, k*G + (r+1)*B). Every augmentation
parameter is drawn per global position from a stream keyed by (seed, epoch) alone, and its length
(2n) does not depend on G. So global batch k holds the same images with the same crops and flips on 1
or 8 processes, and (epoch, k) names the same global batch for any world size: a run resumed with a
different number of processes continues the same sequence.

Last-batch policy, on the global batch: `drop_last=True` (training default) drops the n mod G samples
that do not fill a global batch; `drop_last=False` fills the last global batch by wrapping around the
permutation, so every sample is seen (fewer than G twice) and every batch has one shape. A global batch
larger than the data is an error either way. Evaluation shards are strided (rank r takes samples r,
r + world, ...), padded with -1: order does not matter there, only that every sample counts once.

Plans ahead of time. A plan depends only on (seed, epoch, position), so a training loader builds the
next epoch's plan on a background thread while the current epoch trains (`Loader._plan_ahead`, after the
epoch's first batch), in page-locked memory on a GPU, and the epoch boundary finds it ready: the GPU
waits neither for a host-built plan nor for a host-synchronous copy of it (`device_plan` copies it with
non_blocking=True, which is asynchronous from page-locked memory only). One epoch ahead rather than every
epoch's plan at the start: about the same wait at the boundary (0.07 against 0.03 ms on the 2-core CPU),
for 2 plans in memory instead of one per epoch, and no builds before the first step but the first
epoch's (docs/data_pipeline.md, "Plans ahead of time", has the measurement and its command).

This module imports no backend (only the leaf modules randaugment.py, mix.py and cache.py); the backends
import it, and `loaders.py` imports them (one way).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, fields

import numpy as np
import torch

from harness.data import mix, randaugment
from harness.data.cache import CACHE
from harness.errors import UserError

# Per-channel mean and std of the CIFAR-10 training set (the seeds' 002/004 values; 001's 0.2023 std is
# a long-copied mistake for the mean of per-image stds).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

FLIP_MODES = ("random", "alternate")
PAD_MODES = ("zeros", "reflect")


@dataclass
class Augment:
    """Training augmentation; `enabled=False` turns all of it off (evaluation, or augment=false)."""
    enabled: bool = True
    padding: int = 4  # random crop from the padded image, as torchvision's RandomCrop(32, padding=4)
    flip: bool = True
    cutout: int = 0  # side of a square set to zero after normalisation (0: off)
    # random: a fresh coin per sample and epoch; alternate: the sample's epoch-0 coin XOR (epoch % 2), so
    # every image is seen both ways in any two consecutive epochs (airbench's derandomised flip)
    flip_mode: str = "random"
    pad_mode: str = "zeros"  # zeros, or reflect: mirror the image across its border (no edge repeat)
    mixup: float = 0.0  # Beta(a, a) of the mixing weight (0: off); mix.py
    cutmix: float = 0.0  # Beta(a, a) of the box's weight (0: off)
    mix_switch_prob: float = 0.5  # both on: cutmix for this fraction of the images, mixup for the rest
    mix_stop_epoch: int = 0  # no mixing from this epoch on (0-based; 0: never stop)
    randaugment: str = ""  # rand-mM-nN (randaugment.py; "": off)
    random_erasing: float = 0.0  # probability that an image gets one erased rectangle (0: off)

    def __post_init__(self):
        if self.flip_mode not in FLIP_MODES or self.pad_mode not in PAD_MODES:
            raise UserError(f"data.flip_mode={self.flip_mode!r}, data.pad_mode={self.pad_mode!r}: "
                            f"flip_mode is one of {FLIP_MODES}, pad_mode one of {PAD_MODES}")
        for key, value in (("mixup", self.mixup), ("cutmix", self.cutmix)):
            if value < 0:
                raise UserError(f"data.{key}={value}: the Beta distribution's alpha is positive (0: off), "
                                f"e.g. data.{key}={0.8 if key == 'mixup' else 1.0}")
        for key, value, example in (("mix_switch_prob", self.mix_switch_prob, 0.5),
                                    ("random_erasing", self.random_erasing, 0.25)):
            if not 0.0 <= value <= 1.0:
                raise UserError(f"data.{key}={value}: a probability in [0, 1], e.g. data.{key}={example}")
        if self.mix_stop_epoch < 0:
            raise UserError(f"data.mix_stop_epoch={self.mix_stop_epoch}: an epoch, at least 0 (0: never stop)")
        randaugment.parse(self.randaugment)  # a malformed policy fails here, at construction
        if not self.enabled:  # enabled=False renders none of them: asking for one is a contradiction
            asked = [f"data.{key}={value}" for key, value in (
                ("cutout", self.cutout), ("randaugment", self.randaugment), ("random_erasing", self.random_erasing),
                ("mixup", self.mixup), ("cutmix", self.cutmix)) if value]
            if asked:
                raise UserError(f"data.augment=false turns training augmentation off, but {', '.join(asked)} "
                                f"asks for some: set data.augment=true, or leave {'them' if len(asked) > 1 else 'it'} "
                                f"off")

    # Augment field -> the data config's key where the names differ; every other field is read under its own
    # name, so an option added here reaches the loaders of every tool that builds them from a config
    CONFIG_KEYS = {"enabled": "augment", "padding": "crop_padding"}

    @classmethod
    def from_config(cls, data) -> Augment:
        """The training augmentation a `data` config (harness.config.DataConfig) asks for: every field, read
        from the key of the same name (or `CONFIG_KEYS`'), checked as any construction is."""
        return cls(**{f.name: getattr(data, cls.CONFIG_KEYS.get(f.name, f.name)) for f in fields(cls)})

    @property
    def policy(self) -> randaugment.Policy | None:
        return randaugment.parse(self.randaugment)

    @property
    def soft_targets(self) -> bool:
        """A training loader with this augmentation yields soft targets (mixup or cutmix configured)."""
        return self.enabled and (self.mixup > 0 or self.cutmix > 0)

    def mixes(self, epoch: int) -> bool:
        """Whether images are mixed in `epoch` (mix_stop_epoch: timm's mixup_off_epoch)."""
        return self.soft_targets and (self.mix_stop_epoch == 0 or epoch < self.mix_stop_epoch)


@dataclass
class EpochPlan:
    indices: torch.Tensor  # (batches * batch_size,) int64 sample indices; -1 marks padding (eval only)
    dy: torch.Tensor  # (n,) int64 crop offset in 0..2*padding, in the padded image
    dx: torch.Tensor
    flip: torch.Tensor  # (n,) bool
    cy: torch.Tensor  # (n,) cutout centre row in 0..31
    cx: torch.Tensor
    ops: torch.Tensor | None = None  # (n, N) int64 RandAugment op indices into randaugment.OPS
    negate: torch.Tensor | None = None  # (n, N) bool: the op's magnitude is negated
    erase: torch.Tensor | None = None  # (n, 4) int64 erased rectangle top, left, height, width (0 x 0: none)
    lam: torch.Tensor | None = None  # (n,) float32 the image's own weight in the mix (None: no mixing)
    cut: torch.Tensor | None = None  # (n,) bool: cutmix (else mixup)
    box: torch.Tensor | None = None  # (n, 4) int64 cutmix box y0, y1, x0, x1 (empty for mixup)
    partner: EpochPlan | None = None  # the rendering parameters of each position's mixing partner

    # what renders one image (the partner carries these, not the mixing fields)
    RENDER = ("indices", "dy", "dx", "flip", "cy", "cx", "ops", "negate", "erase")
    MIX = ("lam", "cut", "box")  # what mixes an image with its partner's
    HOST = ("ops", "negate")  # read on the host (RandAugment's grouping, DALI's argument inputs)


def _key_seed(*key: int) -> int:
    # a fixed mix of the key into one 63-bit seed: different keys never collide in practice
    seed = 0
    for k in key:
        seed = (seed * 1_000_003 + int(k) + 0x9E3779B9) % (2**63 - 1)
    return seed


def _generator(*key: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(_key_seed(*key))
    return g


# stream names in the generator key: order, augmentation, the alternate flip's epoch-0 coins, and one
# stream per option added later, so that turning an option on leaves every other draw as it was
_ORDER, _AUGMENT, _FLIP0, _RANDAUGMENT, _ERASE, _MIX = 0, 1, 2, 3, 4, 5

# torchvision's RandomErasing defaults: area fraction, aspect ratio range, tries before giving up
ERASE_SCALE, ERASE_RATIO, ERASE_TRIES = (0.02, 0.33), (0.3, 3.3), 10


def draw_erasing(g: torch.Generator, length: int, p: float, size: int = 32) -> torch.Tensor:
    """Per position, torchvision's `RandomErasing.get_params` (value 0, after normalisation): with
    probability p a rectangle of area fraction U(0.02, 0.33) and log-uniform aspect ratio in (0.3, 3.3),
    the first of 10 tries that fits inside the image, at a uniform position; (top, left, height, width),
    all 0 where nothing is erased (the coin, or no try fits)."""
    coin = torch.rand(length, generator=g) < p
    area = size * size * torch.empty(length, ERASE_TRIES).uniform_(*ERASE_SCALE, generator=g)
    aspect = torch.exp(torch.empty(length, ERASE_TRIES).uniform_(*map(math.log, ERASE_RATIO), generator=g))
    h, w = torch.sqrt(area * aspect).round().long(), torch.sqrt(area / aspect).round().long()
    fits = (h < size) & (w < size)
    first = fits.int().argmax(1, keepdim=True)  # the first try that fits
    on = coin & fits.any(1)
    h, w = (torch.where(on, t.gather(1, first)[:, 0], 0) for t in (h, w))
    u = torch.rand(length, 2, generator=g)
    top, left = (u[:, 0] * (size - h + 1)).long(), (u[:, 1] * (size - w + 1)).long()
    return torch.stack([top, left, h, w], 1)


def global_order(n: int, global_batch: int, *, seed: int, epoch: int, drop_last: bool) -> torch.Tensor:
    """Sample index at every global position of a training epoch: K * global_batch long (module
    docstring). Depends on (seed, epoch) and the global batch (at most n) only, never on the world size."""
    perm = torch.randperm(n, generator=_generator(seed, epoch, _ORDER))
    batches = n // global_batch if drop_last else math.ceil(n / global_batch)
    return perm[torch.arange(batches * global_batch) % n]  # positions past n wrap (drop_last=False)


def eval_indices(n: int, batch_size: int, rank: int, world: int, pad_value: int = -1) -> torch.Tensor:
    """The rank's evaluation samples: strided shards that hold every sample once, padded with
    `pad_value` to whole batches of one count on every rank."""
    mine = torch.arange(rank, n, world)
    batches = math.ceil(math.ceil(n / world) / batch_size)
    out = torch.full((batches * batch_size,), pad_value, dtype=torch.int64)
    out[: len(mine)] = mine
    return out


def make_plan(n: int, batch_size: int, rank: int, world: int, *, seed: int, epoch: int, train: bool,
              drop_last: bool, augment: Augment) -> EpochPlan:
    """Rank `rank`'s plan for one epoch, `batch_size` images per batch (module docstring)."""
    if not train:
        idx = eval_indices(n, batch_size, rank, world)
        m = len(idx)
        zeros = torch.zeros(m, dtype=torch.int64)  # the unpadded image, no flip, no cutout
        return EpochPlan(idx, zeros, zeros, torch.zeros(m, dtype=torch.bool), zeros, zeros)
    G = batch_size * world
    if G > n:  # with drop_last=False a batch would hold some images twice: refused too
        raise UserError(
            f"the global batch ({batch_size} per process x {world} process{'es' if world > 1 else ''} = {G} "
            f"images) is larger than the training data ({n} images): no full batch. Lower "
            f"train.batch_size or raise data.limit_train.")
    order = global_order(n, G, seed=seed, epoch=epoch, drop_last=drop_last)
    positions = len(order)
    if augment.enabled:
        # one draw per global position, of a fixed length (2n covers the wrapped positions, < n + G):
        # the same values whatever G and the world size are
        g = _generator(seed, epoch, _AUGMENT)
        span, length = 2 * augment.padding + 1, 2 * n
        dy, dx = (torch.randint(0, span, (length,), generator=g)[:positions] for _ in range(2))
        coin = torch.randint(0, 2, (length,), generator=g)[:positions].bool()
        cy, cx = (torch.randint(0, 32, (length,), generator=g)[:positions] for _ in range(2))
        if not augment.flip:
            flip = torch.zeros(positions, dtype=torch.bool)
        elif augment.flip_mode == "alternate":
            # a coin per sample (not per position), drawn once for the run: the flip alternates per epoch
            first = torch.randint(0, 2, (n,), generator=_generator(seed, _FLIP0)).bool()
            flip = first[order] ^ bool(epoch % 2)
        else:
            flip = coin
    else:  # centred crop (the unpadded image inside the padded one), no flip, no cutout
        dy = dx = torch.full((positions,), augment.padding, dtype=torch.int64)
        flip = torch.zeros(positions, dtype=torch.bool)
        cy = cx = torch.zeros(positions, dtype=torch.int64)
    whole = EpochPlan(order, dy, dx, flip, cy, cx)
    length = 2 * n  # the fixed draw length, as above
    if augment.enabled and augment.policy:
        ops, negate = randaugment.draw(_generator(seed, epoch, _RANDAUGMENT), length, augment.policy.num_ops)
        whole.ops, whole.negate = ops[:positions], negate[:positions]
    if augment.enabled and augment.random_erasing > 0:
        whole.erase = draw_erasing(_generator(seed, epoch, _ERASE), length, augment.random_erasing)[:positions]

    def mine(t: torch.Tensor) -> torch.Tensor:  # rank r's slice of every global batch, in batch order
        return t.view(-1, world, batch_size, *t.shape[1:])[:, rank].reshape(-1, *t.shape[1:])

    plan = EpochPlan(*(None if t is None else mine(t) for t in (getattr(whole, f) for f in EpochPlan.RENDER)))
    if augment.mixes(epoch):
        rng = np.random.default_rng(_key_seed(seed, epoch, _MIX))
        lam, cut, box = mix.draw(rng, length, mixup=augment.mixup, cutmix=augment.cutmix,
                                 switch_prob=augment.mix_switch_prob)
        plan.lam, plan.cut, plan.box = (mine(t[:positions]) for t in (lam, cut, box))
        partner = mix.partner_positions(positions, G)
        plan.partner = EpochPlan(*(None if t is None else mine(t[partner])
                                   for t in (getattr(whole, f) for f in EpochPlan.RENDER)))
    return plan


def pinned(plan: EpochPlan) -> EpochPlan:
    """The plan in page-locked host memory (its mixing partners' too), each tensor compacted: a
    non_blocking copy to the GPU is then asynchronous, where from pageable memory it is staged and waits."""
    return EpochPlan(**{f.name: None if v is None else pinned(v) if isinstance(v, EpochPlan) else v.pin_memory()
                        for f in fields(plan) for v in (getattr(plan, f.name),)})


class _Ahead:
    """One epoch's plan, built on a thread of its own (`Loader.plan`: the next epoch's, while this one
    trains). make_plan draws from generators of its own, never a global one, so the thread changes no
    value; torch's operators release the GIL while they run."""

    def __init__(self, build, epoch: int):
        self.epoch, self._plan, self._error = epoch, None, None
        # daemon: a process that ends while a plan is being built does not wait for it
        self._thread = threading.Thread(target=self._run, args=(build,), name=f"harness-plan-epoch-{epoch}",
                                        daemon=True)
        self._thread.start()

    def _run(self, build) -> None:
        try:
            self._plan = build(self.epoch)
        except BaseException as e:  # raised in the loader's thread, by `result`
            self._error = e

    def result(self) -> EpochPlan | None:
        """The plan (waiting for the thread if it has not finished); None in a process forked while the
        thread ran (the child has no thread): the caller then builds the plan itself."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._plan


def pad_images(images: np.ndarray, padding: int, mode: str) -> torch.Tensor:
    """The uint8 NHWC split padded once by `padding` pixels on each side of H and W: zeros, or the
    reflection across the border (numpy's/torch's 'reflect': the edge pixel is not repeated). Both
    backends crop from this, so they agree for every pad mode."""
    x = np.ascontiguousarray(images, dtype=np.uint8)
    if padding:
        x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                   mode="reflect" if mode == "reflect" else "constant")
    return torch.from_numpy(x)


def normalise(images_nhwc: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 NHWC images -> NCHW in `dtype`, normalised exactly as `Loader.normalised` does it (on the images'
    device), for code that feeds a model outside a loader (inspection, the whitening statistics)."""
    x = torch.as_tensor(np.asarray(images_nhwc) if isinstance(images_nhwc, np.ndarray) else images_nhwc)
    mean = torch.tensor(CIFAR_MEAN, dtype=dtype, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(CIFAR_STD, dtype=dtype, device=x.device).view(1, 3, 1, 1) * 255
    return (x.permute(0, 3, 1, 2).to(dtype) - mean) / std


def batch_labels(labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Labels of sample indices `idx` (on the labels' device); -1 where idx is evaluation padding."""
    return torch.where(idx >= 0, labels[idx.clamp(min=0)], -1)


class Loader:
    """Shared bookkeeping of every backend: plan per epoch, len, resumable position.

    Backends implement `_batch(plan, k) -> (images, targets)` for batch `k` of the pass's plan, or override
    `_render(plan, ks)` when they work ahead; they render uint8 images, hand them to `normalised` (or do the
    same on their own device) and the result to `deliver`, which mixes and casts. A pass renders the plan
    it started with: a `set_epoch` in the middle of it takes effect at the next pass.
    """

    # the plan's fields a backend reads on the device (`device_plan`): this default is the torch
    # backend's (all but the host-read RandAugment rows); DALI renders on its own and needs fewer
    device_fields = tuple(f for f in EpochPlan.RENDER if f not in EpochPlan.HOST) + EpochPlan.MIX

    def __init__(self, num_samples: int, batch_size: int, *, train: bool, rank: int = 0, world: int = 1,
                 seed: int = 0, drop_last: bool = True, augment: Augment | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 channels_last: bool = True, num_classes: int = 10, epochs: int | None = None):
        self.n, self.batch_size, self.train, self.num_classes = num_samples, batch_size, train, num_classes
        self.epochs = epochs  # training: the run's epoch count, where no plan is built ahead (None: endless)
        self.rank, self.world, self.seed, self.drop_last = rank, world, seed, drop_last
        off = Augment(enabled=False, padding=augment.padding if augment else 4)
        self.augment = augment if (augment and train) else off
        self.device, self.dtype, self.channels_last = torch.device(device), dtype, channels_last
        self.epoch, self.start_batch = 0, 0
        self._position: int | None = None  # batches handed out by the pass in progress (None: no pass)
        self._plan: EpochPlan | None = None
        self._plan_epoch = -1
        self._ahead: _Ahead | None = None  # the next epoch's plan, being built (training only)
        self._dev_plan: dict = {}
        self._dev_plan_key: EpochPlan | None = None
        self.mean = torch.tensor(CIFAR_MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(CIFAR_STD, device=self.device).view(1, 3, 1, 1) * 255
        self.plan()  # fail early: a batch larger than the data is an error now, not an empty epoch

    # -- the interface ---------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.start_batch, self._position = epoch, 0, None

    def __len__(self) -> int:
        return math.ceil(len(self.plan().indices) / self.batch_size)

    def endless(self):
        """Batches without end, epoch after epoch (each reshuffled), as a training run sees them: the
        benchmarks' data source."""
        epoch = self.epoch
        while True:
            self.set_epoch(epoch)
            yield from self
            epoch += 1

    def __iter__(self):
        start, self.start_batch = self.start_batch, 0
        self._position = start
        plan = self.plan()  # the pass's plan, whatever set_epoch does during it
        batches = math.ceil(len(plan.indices) / self.batch_size)
        for k, batch in enumerate(self._render(plan, range(start, batches)), start):
            self._position = k + 1  # handed out: a checkpoint taken after this step resumes at k + 1
            yield batch
            if k == start:
                self._plan_ahead()
        self._position = None

    def state_dict(self) -> dict:
        """{'epoch', 'batch'}: during a pass, the next batch to hand out; between passes, where the next
        pass starts (0, or the batch given to load_state_dict). Batch k is global batch k: the same
        images for any world size."""
        batch = self._position if self._position is not None else self.start_batch
        return {"epoch": self.epoch, "batch": batch}

    def load_state_dict(self, state: dict) -> None:
        """Continue at batch `state['batch']` of epoch `state['epoch']` on the next iteration."""
        self.epoch, self.start_batch = int(state["epoch"]), int(state["batch"])
        self._position = None

    # -- helpers for backends -------------------------------------------------------------------
    def plan(self) -> EpochPlan:
        """The current epoch's plan (evaluation: its one plan): the one built ahead while the previous
        epoch trained (`_plan_ahead`, module docstring), waited for if not done yet; an epoch other than
        the one built ahead (the first, a resume, a jump) is built here, and the thread's plan dropped.
        The values are make_plan's whichever thread built them."""
        epoch = self.epoch if self.train else 0
        if self._plan is None or self._plan_epoch != epoch:
            ahead, self._ahead = self._ahead, None
            plan = ahead.result() if ahead is not None and ahead.epoch == epoch else None
            self._plan = plan if plan is not None else self._build_plan(epoch)
            self._plan_epoch = epoch
        return self._plan

    def _plan_ahead(self) -> None:
        """Start building the next epoch's training plan, once per epoch. `__iter__` calls it after the
        pass's first batch, not at the boundary: started at the boundary the thread costs it 0.9 ms
        (median, p90 5 ms: the GIL's 5 ms switch interval) against 0.07 ms (docs/data_pipeline.md), which
        the GPU absorbs mid-epoch, with steps queued, and would wait for at the boundary, where the loop
        has synchronised. None past the run's last epoch (`epochs`), when the loader knows it."""
        nxt = self._plan_epoch + 1
        last = self.epochs is not None and nxt >= self.epochs
        if self.train and not last and (self._ahead is None or self._ahead.epoch != nxt):
            self._ahead = _Ahead(self._build_plan, nxt)

    def _build_plan(self, epoch: int) -> EpochPlan:
        plan = make_plan(self.n, self.batch_size, self.rank, self.world, seed=self.seed, epoch=epoch,
                         train=self.train, drop_last=self.drop_last, augment=self.augment)
        return pinned(plan) if self.device.type == "cuda" else plan

    def padded_images(self, images: np.ndarray) -> torch.Tensor:
        """The split on the device, padded once for the crop (not at all without augmentation); for a
        split of the data set `load_dataset` cached, made once per process and shared by the next run's
        loaders (cache.py; train.repeats), which only read it."""
        p = self.augment.padding if self.augment.enabled else 0
        mode = self.augment.pad_mode if p else ""
        return CACHE.derived(images, ("padded", p, mode, str(self.device)),
                             lambda: pad_images(images, p, mode).to(self.device))

    def batch_slice(self, k: int) -> slice:
        return slice(k * self.batch_size, (k + 1) * self.batch_size)

    def device_plan(self, plan: EpochPlan) -> dict:
        """`plan`'s `device_fields` on the device, copied once per plan: {field: tensor} for the rank's own
        positions, and under 'partner' the same for their mixing partners when this rank renders them (the
        epoch mixes and `own_partners` is false). On a GPU the plan is page-locked (`_build_plan`), so the
        copy is queued on the stream and the host goes on at once."""
        if self._dev_plan_key is not plan:
            def to_device(p: EpochPlan) -> dict:
                return {f: getattr(p, f).to(self.device, non_blocking=True) for f in self.device_fields
                        if getattr(p, f) is not None}

            self._dev_plan = to_device(plan)
            if plan.partner is not None and not self.own_partners:
                self._dev_plan["partner"] = to_device(plan.partner)
            self._dev_plan_key = plan
        return self._dev_plan

    @property
    def own_partners(self) -> bool:
        """The rank's partners are its own images, reversed (mix.py: position i <-> G - 1 - i): true on
        one process, and on the middle rank of an odd number. Other ranks render their partners."""
        return self.world - 1 - self.rank == self.rank

    def normalised(self, x: torch.Tensor, rows: dict | None = None) -> torch.Tensor:
        """uint8 NCHW batch (any strides) -> normalised float32, then cutout and random erasing as the
        batch's plan `rows` say (fill 0: the mean image)."""
        x = (x.float() - self.mean) / self.std
        c = self.augment.cutout
        holes = []
        if self.augment.enabled and c > 0 and rows is not None:  # the square may overhang the edge
            holes.append((rows["cy"] - c // 2, rows["cx"] - c // 2, torch.full_like(rows["cy"], c),
                          torch.full_like(rows["cx"], c)))
        if rows is not None and "erase" in rows:
            holes.append(rows["erase"].unbind(1))
        ar = torch.arange(x.shape[-1], device=x.device)[None, :]
        for top, left, h, w in holes:
            top, left, h, w = top[:, None], left[:, None], h[:, None], w[:, None]
            hole = ((ar >= top) & (ar < top + h))[:, :, None] & ((ar >= left) & (ar < left + w))[:, None, :]
            x = x.masked_fill(hole[:, None], 0.0)
        return x

    def deliver(self, x: torch.Tensor, labels: torch.Tensor, plan: EpochPlan, k: int,
                partner: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 NCHW batch k of `plan` and its labels -> what the loader yields: mixed with the partners'
        images and labels (`partner`; None when the rank's own, reversed) as the plan says when its epoch
        mixes, soft targets when mixing is configured, in the model's dtype and memory format."""
        if self.augment.soft_targets:
            rows = self.device_plan(plan)
            if "lam" in rows:
                s = self.batch_slice(k)
                other, other_labels = partner if partner is not None else (x.flip(0), labels.flip(0))
                lam = rows["lam"][s]
                x = mix.mix_images(x, other, lam, rows["cut"][s], rows["box"][s])
                labels = mix.mix_targets(labels, other_labels, lam, self.num_classes)
            else:  # mixing has stopped (mix_stop_epoch): the same soft targets, one-hot
                labels = mix.one_hot(labels, self.num_classes)
        return self.cast(x), labels

    def cast(self, x: torch.Tensor) -> torch.Tensor:
        """Images in the model's dtype and memory format."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.to(self.dtype).contiguous(memory_format=fmt)

    def _batch(self, plan: EpochPlan, k: int):
        raise NotImplementedError

    def _render(self, plan: EpochPlan, ks: range):
        """Batches `ks` of `plan`, in order. A backend that works ahead (DALI's prefetch queue) overrides
        this; the default renders one batch at a time."""
        for k in ks:
            yield self._batch(plan, k)
