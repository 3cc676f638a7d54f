"""The NVIDIA DALI backend: renders the batches of an `EpochPlan` with a DALI pipeline on the device.

DALI draws no random numbers here; it only renders the shared plan, so a batch equals the torch
backend's batch for the same (seed, epoch, k) up to float rounding, and resuming at (epoch, batch) is
exact.

Data flow on a GPU (nothing crosses the host-device link per step but the plan's few numbers):

    the split, padded once for the crop, uint8 NHWC, resident in GPU memory   (once, at construction)
    batch k: torch gathers images[plan.indices[k]] on the device -> (B,40,40,3) CUDA tensor
    fn.external_source(device="gpu")  <- that tensor (DALI reads __cuda_array_interface__ /
                                         torch tensors natively and copies it on torch's current
                                         stream, so the copy is ordered after the gather)
    fn.external_source(device="cpu")  <- start (B,2) int32 = (dy, dx), mirror (B,) int32,
                                         hole (B,2) float32: argument inputs live on the host in DALI
    fn.slice(start, shape=(32,32))                                       the crop, inside the padding
    [fn.flip(horizontal=mirror); per layer: select(RandAugment ops, op)] RandAugment, if data.randaugment
    fn.crop_mirror_normalize(mirror, mean, std, FLOAT, HWC or CHW)      flip + normalise + layout
    fn.erase(anchor=hole, shape=(c,c), fill 0)                           cutout, if data.cutout > 0
    fn.erase(anchor=(top,left), shape=(h,w), fill 0)                     random erasing, if on
    pipe.run(torch's current stream) -> torch.from_dlpack(output)      no copy (see `_to_torch`)
    Loader.deliver: mixup/cutmix (one torch expression, shared with the torch backend), cast

Evaluation (or augmentation off) is external_source -> crop_mirror_normalize only.

RandAugment: the plan's op and sign of each image and layer are argument inputs, and DALI's auto_aug
`select` (conditional execution) sends each image through its op, built from DALI's auto_aug
augmentations with randaugment.py's magnitudes, so both backends apply the same op with the same
parameter to the same image. Measured against torchvision on 64 CIFAR-10 test images at rand-m9: Identity,
ShearX/Y, TranslateX/Y, Rotate, Brightness, Contrast, Sharpness, Posterize, Solarize and AutoContrast give
the same pixels (DALI's shear matrix is the inverse of torchvision's: its parameter is negated here;
Brightness, Color, Contrast, Sharpness and AutoContrast are written with DALI arithmetic to truncate as
torchvision does, where DALI's own operators round); Color differs by one level on 0.16% of the pixels
(torch fuses its blend's multiply-add); Equalize is DALI's `fn.equalize`, OpenCV's lookup table, not
PIL's that torchvision copies: up to 65 levels apart on 78% of the pixels (mean 6 levels). DALI has no
histogram operator to build PIL's table from.

Mixing needs the partner images: when a rank's partners are not its own images (mix.py), the pipeline
renders 2B images per batch (its own, then its partners'), at a batch size that varies per epoch (B
after data.mix_stop_epoch).

On a CPU the same graph runs with `device_id=None`: the images source is `device="cpu"` and is fed
the same gather as a numpy view of the CPU tensor (given a torch tensor, DALI 2.4 asks torch for its
current CUDA stream, which fails on a machine without a GPU driver: checked here). That is the only
difference between the two paths (`_feed`), so the tests here exercise the sources, the graph, the
resume logic and the output conversion that a GPU runs.

Padding is done once for the whole split (zeros or reflection, `interface.pad_images`), as the torch
backend does: DALI's `out_of_bounds_policy="pad"` knows no reflection, and one padded copy costs 240 MB
on the GPU for CIFAR-10. `crop_mirror_normalize` cannot crop by itself: its crop position is a fraction
of (W - crop_w), which a float cannot hit exactly for every offset.

Layout: with channels_last the pipeline emits HWC and torch's permute(0, 3, 1, 2) gives an NCHW tensor
with channels_last strides at no cost; otherwise it emits CHW, which is NCHW-contiguous. The pipeline
emits float32 and torch casts to bf16/fp16, the same cast the torch backend does.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from harness.data import randaugment
from harness.data.interface import EpochPlan, Loader, batch_labels
from harness.errors import UserError


class DaliLoader(Loader):
    """DALI-rendered batches of the shared plan, `prefetch` batches ahead (DALI's prefetch queue)."""

    # on the device: the indices (torch gathers the images there, and the labels) and the mixing
    # weights and boxes (`deliver`); the rendering parameters go to DALI from the host
    device_fields = ("indices",) + EpochPlan.MIX

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, prefetch: int = 2, **kw):
        super().__init__(len(labels), batch_size, **kw)
        if prefetch < 1:
            raise UserError(f"data.prefetch={prefetch}: the DALI prefetch queue depth must be at least 1")
        self.prefetch = prefetch
        self.gpu = self.device.type == "cuda"
        if self.gpu:
            self.device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self.images = self.padded_images(images)  # on the training device, once
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        # What the sources feed: batch indices of the pass, one iterator per source (DALI may call the
        # two sources in either order; each advances its own), and the epoch's plan as arrays.
        self._todo_images, self._todo_params = iter(()), iter(())
        self._arrays = None  # (plan, device indices, host parameters, and the partners' two or None)
        self._pipe = None
        self._pass = None
        self._dirty = False  # batches left in DALI's queue from an abandoned pass: rebuild

    # -- the pipeline ------------------------------------------------------------------------------
    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        # On a GPU the host stage only feeds the sources; on a CPU every operator runs there and DALI
        # parallelises over samples.
        threads = 2 if self.gpu else max(1, min(4, os.cpu_count() or 1))
        aug = self.augment
        policy = aug.policy if aug.enabled else None
        cutout = aug.enabled and aug.cutout > 0
        # feed only what the graph uses (DALI warns about unused source outputs, and they cost a copy)
        self._params = ((["start", "mirror"] if aug.enabled else []) + (["hole"] if cutout else [])
                        + [f"{name}{layer}" for layer in range(policy.num_ops if policy else 0)
                           for name in ("op", "negate")]
                        + (["erase_at", "erase_size"] if aug.enabled and aug.random_erasing > 0 else []))
        dtype = {"start": types.INT32, "mirror": types.INT32, "hole": types.FLOAT, "erase_at": types.FLOAT,
                 "erase_size": types.FLOAT}
        # mixing with partners rendered here: up to 2B images per run (own, then partners')
        most = self.batch_size * (2 if aug.soft_targets and not self.own_partners else 1)

        # exec_dynamic: outputs are owned by the objects `run` returns (reference counted) instead of
        # a ring of `prefetch` buffers that a later run overwrites, and `run(stream)` hands them out
        # ordered on that stream; both are what `_to_torch` relies on. Conditionals: RandAugment's select.
        @pipeline_def(batch_size=most, num_threads=threads, device_id=self.device_id if self.gpu else None,
                      exec_dynamic=True, prefetch_queue_depth=self.prefetch, seed=self.seed,
                      enable_conditionals=policy is not None)
        def graph():
            # cuda_stream unset: DALI copies a torch CUDA tensor on torch's current stream of the
            # thread that calls the source, which is ours (sources run inside `pipe.run`), so the copy
            # waits for the gather; the gathered tensor may then be freed (no_copy=False).
            images = fn.external_source(source=self._image_source, batch=True, layout="HWC",
                                        dtype=types.UINT8, device="gpu" if self.gpu else "cpu")
            fed = {}
            if self._params:
                nodes = fn.external_source(source=self._param_source, num_outputs=len(self._params),
                                           batch=True, dtype=[dtype.get(f, types.INT32) for f in self._params])
                fed = dict(zip(self._params, nodes))
            mirror = fed["mirror"] if aug.enabled else 0
            if aug.enabled:  # a 32x32 window of the padded image, at (dy, dx): the padded crop
                images = fn.slice(images, start=fed["start"], shape=[32, 32], axis_names="HW")
            if policy is not None:  # on the flipped uint8 crop, as torchvision's pipeline orders it
                images = fn.flip(images, horizontal=mirror)
                mirror = 0
                images = _rand_augment(images, policy, fed)
            # the exact float32 values the torch backend uses (mean and std of 0..255 pixels)
            x = fn.crop_mirror_normalize(
                images, mirror=mirror,
                mean=self.mean.flatten().cpu().tolist(), std=self.std.flatten().cpu().tolist(),
                dtype=types.FLOAT, output_layout="HWC" if self.channels_last else "CHW")
            if cutout:
                # top-left corner (cy - c//2, cx - c//2), side c; erase clips a square that overhangs
                x = fn.erase(x, anchor=fed["hole"], shape=[float(aug.cutout)] * 2, axis_names="HW",
                             fill_value=0.0)
            if "erase_at" in fed:  # random erasing: the plan's rectangle, 0 x 0 where none
                x = fn.erase(x, anchor=fed["erase_at"], shape=fed["erase_size"], axis_names="HW", fill_value=0.0)
            return x

        pipe = graph()
        pipe.build()
        return pipe

    def _epoch_arrays(self, plan: EpochPlan):
        """`plan` as the sources slice it (built once per plan): sample indices on the device (the gather
        runs there; `device_plan`'s one copy), per-sample parameters as host arrays (DALI argument
        inputs); for the partners too when this rank renders them."""
        if self._arrays is None or self._arrays[0] is not plan:
            c = self.augment.cutout

            def host(p):
                out = {
                    "start": torch.stack([p.dy, p.dx], 1).numpy().astype(np.int32),
                    "mirror": p.flip.numpy().astype(np.int32),
                    "hole": torch.stack([p.cy - c // 2, p.cx - c // 2], 1).numpy().astype(np.float32),
                }
                for layer in range(0 if p.ops is None else p.ops.shape[1]):
                    out[f"op{layer}"] = p.ops[:, layer].numpy().astype(np.int32)
                    out[f"negate{layer}"] = p.negate[:, layer].numpy().astype(np.int32)
                if p.erase is not None:
                    out["erase_at"], out["erase_size"] = (p.erase[:, i:i + 2].numpy().astype(np.float32)
                                                          for i in (0, 2))
                return {k: np.ascontiguousarray(v) for k, v in out.items()}

            rows = self.device_plan(plan)
            partner = rows.get("partner")  # present when this rank renders its partners
            self._arrays = (plan, rows["indices"], host(plan), None if partner is None else partner["indices"],
                            None if partner is None else host(plan.partner))
        return self._arrays

    def _feed(self, batch: torch.Tensor):
        """What the images source hands DALI: the CUDA tensor itself on a GPU (no host copy), a numpy
        view of the CPU tensor on a CPU. The one line where the two paths differ."""
        return batch if self.gpu else batch.numpy()

    def _image_source(self):
        k = next(self._todo_images)  # StopIteration ends DALI's epoch
        s = self.batch_slice(k)
        idx = self._arrays[1][s]
        if self._arrays[3] is not None:  # then the partners' images
            idx = torch.cat([idx, self._arrays[3][s]])
        return self._feed(self.images[idx.clamp(min=0)])  # evaluation padding (-1) renders image 0

    def _param_source(self):
        k = next(self._todo_params)
        s = self.batch_slice(k)
        own, partner = self._arrays[2], self._arrays[4]
        if partner is None:
            return [own[f][s] for f in self._params]
        return [np.concatenate([own[f][s], partner[f][s]]) for f in self._params]

    def _to_torch(self, out) -> torch.Tensor:
        """The output batch as a torch tensor without a copy. DALI 2.x's default (dynamic) executor
        gives every run fresh, reference-counted output memory, so the tensor stays valid after later
        runs (no ring buffer to copy out of before the next `run()`); DALI's own PyTorch iterator uses
        DLPack the same way with this executor. `run` was given torch's current stream, so the output
        is ready in that stream's order; torch.from_dlpack passes the same stream to __dlpack__."""
        return torch.from_dlpack(out.as_tensor())

    # -- the interface -----------------------------------------------------------------------------
    def _render(self, plan: EpochPlan, ks: range):
        if self._pipe is None or self._dirty:
            self._pipe = self._build()  # ~5 ms on this CPU; only after an abandoned pass
        pipe = self._pipe
        # the sources and `deliver` read the one plan of the pass (a set_epoch in the middle mixes no epochs)
        self._todo_images, self._todo_params = iter(ks), iter(ks)
        arrays = self._epoch_arrays(plan)
        idx, partner_idx = arrays[1], arrays[3]
        self._dirty = True
        token = self._pass = object()  # the pipeline serves one pass at a time
        stream = torch.cuda.current_stream(self.device) if self.gpu else None  # None: host-synchronous
        try:
            for k in ks:
                if self._pass is not token:
                    raise RuntimeError("a DaliLoader pass was resumed after a newer pass started; "
                                       "iterate one pass at a time")
                (out,) = pipe.run(stream)
                x = self._to_torch(out)
                if self.channels_last:
                    x = x.permute(0, 3, 1, 2)  # NCHW shape, channels_last strides: a view
                s = self.batch_slice(k)
                labels = batch_labels(self.labels, idx[s])
                partner = None
                if partner_idx is not None:  # own images, then the partners'
                    x, theirs = x[:self.batch_size], x[self.batch_size:]
                    partner = (theirs, batch_labels(self.labels, partner_idx[s]))
                yield self.deliver(x, labels, plan, k, partner)
            try:
                pipe.run(stream)  # the sources are exhausted: DALI ends its epoch with StopIteration
            except StopIteration:
                pass
            else:
                raise RuntimeError("DALI produced more batches than the plan has")  # a bug, not a user error
            pipe.reset()
            self._dirty = False
        finally:
            if self._pass is token:  # an old pass finalised late must not end the current one
                self._todo_images, self._todo_params = iter(()), iter(())

    def _batch(self, plan: EpochPlan, k: int):
        (batch,) = self._render(plan, range(k, k + 1))  # drains the pipeline: no rebuild on the next pass
        return batch


def _rand_augment(images, policy, fed):
    """`policy.num_ops` layers of RandAugment on uint8 HWC images: each image goes through the op the
    plan names (`fed['op<layer>']`, an index into randaugment.OPS), its magnitude negated where
    `fed['negate<layer>']` is 1, by DALI auto_aug's `select` (conditional execution)."""
    from nvidia.dali import types
    from nvidia.dali.auto_aug.core import select, signed_bin

    suite = _rand_augment_suite(policy)
    for layer in range(policy.num_ops):
        # one magnitude per op (the policy's bin), so the bin is 0 of 1; the sign comes from the plan
        sign = signed_bin(0, random_sign=fed[f"negate{layer}"])
        images = select(suite, fed[f"op{layer}"], images, magnitude_bin=sign, num_magnitude_bins=1,
                        fill_value=0, interp_type=types.INTERP_NN)
    return images


def _rand_augment_suite(policy) -> list:
    """randaugment.OPS as DALI auto_aug augmentations, in the same order, at the policy's magnitudes.
    The arithmetic follows torchvision's (the module docstring lists what was measured)."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types
    from nvidia.dali.auto_aug import augmentations as a
    from nvidia.dali.auto_aug.core import augmentation

    def as_float(x):
        return fn.cast(x, dtype=types.FLOAT)

    def truncate(v):  # torchvision's float -> uint8: clamp, then drop the fraction
        return fn.cast(dmath.floor(dmath.clamp(v, 0.0, 255.0)), dtype=types.UINT8)

    def constant(value: np.ndarray, like):  # on the images' device, as DALI's own sharpness puts its kernel
        return types.Constant(value, device=like.device)

    def gray(x):  # torchvision's rgb_to_grayscale weights, floored as it does for uint8 images
        weights = constant(np.array([0.2989, 0.587, 0.114], dtype=np.float32), x)
        return dmath.floor(fn.reductions.sum(x * weights, axis_names="C", keep_dims=True))

    def enhance(magnitude):  # torchvision's enhance factor: 1 + signed magnitude
        return np.float32(1.0 + magnitude)

    @augmentation(randomly_negate=True, mag_to_param=enhance)
    def brightness(data, factor):
        return truncate(as_float(data) * factor)

    @augmentation(randomly_negate=True, mag_to_param=enhance)
    def color(data, factor):
        x = as_float(data)
        return truncate(x * factor + gray(x) * (1.0 - factor))

    @augmentation(randomly_negate=True, mag_to_param=enhance)
    def contrast(data, factor):
        x = as_float(data)
        mean = fn.reductions.mean(gray(x), axis_names="HWC", keep_dims=True)
        return truncate(x * factor + mean * (1.0 - factor))

    interior = np.zeros((32, 32, 1), np.float32)
    interior[1:-1, 1:-1] = 1.0  # torchvision's sharpness leaves the 1-pixel border as it was

    @augmentation(randomly_negate=True, mag_to_param=enhance)
    def sharpness(data, factor):
        x = as_float(data)
        kernel = constant(np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / np.float32(13), x)
        blurred = dmath.floor(fn.filter(x, kernel) + 0.5)  # k/13 is never within 1/26 of a tie
        return truncate(x + constant(interior, x) * ((blurred - x) * (1.0 - factor)))

    @augmentation
    def auto_contrast(data, _):
        x = as_float(data)
        low = fn.reductions.min(x, axis_names="HW", keep_dims=True)
        high = fn.reductions.max(x, axis_names="HW", keep_dims=True)
        flat = high == low  # a one-level channel is left as it is
        scale = (high - low) * np.float32(1.0 / 255.0) + flat
        return truncate((x - low * (flat ^ True)) / scale)

    @augmentation
    def equalize(data, _):
        return fn.equalize(data)

    def posterize_mask(bits):
        return np.uint8((0xFF << (8 - int(bits))) & 0xFF)

    mags = dict(zip(randaugment.NAMES, policy.magnitudes(32)))
    one = {name: np.array([value], np.float32) for name, value in mags.items()}
    return [  # randaugment.OPS order
        a.identity,
        a.shear_x.augmentation(mag_range=one["ShearX"], mag_to_param=lambda v: [-v, 0]),  # DALI's shear
        a.shear_y.augmentation(mag_range=one["ShearY"], mag_to_param=lambda v: [0, -v]),  # is inverse
        a.translate_x_no_shape.augmentation(mag_range=np.trunc(one["TranslateX"])),  # whole pixels
        a.translate_y_no_shape.augmentation(mag_range=np.trunc(one["TranslateY"])),
        a.rotate.augmentation(mag_range=one["Rotate"]),
        brightness.augmentation(mag_range=one["Brightness"]),
        color.augmentation(mag_range=one["Color"]),
        contrast.augmentation(mag_range=one["Contrast"]),
        sharpness.augmentation(mag_range=one["Sharpness"]),
        a.posterize.augmentation(mag_range=one["Posterize"], mag_to_param=posterize_mask),
        a.solarize.augmentation(mag_range=one["Solarize"] * 255.0),  # unchanged below the threshold
        auto_contrast,
        equalize,
    ]
