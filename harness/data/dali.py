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
    fn.crop_mirror_normalize(mirror, mean, std, FLOAT, HWC or CHW)      flip + normalise + layout
    fn.erase(anchor=hole, shape=(c,c), fill 0)                           cutout, if data.cutout > 0
    pipe.run(torch's current stream) -> torch.from_dlpack(output)      no copy (see `_to_torch`)

Evaluation (or augmentation off) is external_source -> crop_mirror_normalize only.

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

from harness.data.interface import Loader, batch_labels
from harness.errors import UserError


class DaliLoader(Loader):
    """DALI-rendered batches of the shared plan, `prefetch` batches ahead (DALI's prefetch queue)."""

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
        self._arrays = None  # (epoch plan, device indices, host parameter arrays)
        self._pipe = None
        self._pass = None
        self._dirty = False  # batches left in DALI's queue from an abandoned pass: rebuild

    # -- the pipeline ------------------------------------------------------------------------------
    def _build(self):
        from nvidia.dali import Pipeline, fn, types

        # On a GPU the host stage only feeds the sources; on a CPU every operator runs there and DALI
        # parallelises over samples.
        threads = 2 if self.gpu else max(1, min(4, os.cpu_count() or 1))
        # exec_dynamic: outputs are owned by the objects `run` returns (reference counted) instead of
        # a ring of `prefetch` buffers that a later run overwrites, and `run(stream)` hands them out
        # ordered on that stream; both are what `_to_torch` relies on.
        pipe = Pipeline(batch_size=self.batch_size, num_threads=threads,
                        device_id=self.device_id if self.gpu else None, exec_dynamic=True,
                        prefetch_queue_depth=self.prefetch, seed=self.seed)
        aug = self.augment
        cutout = aug.enabled and aug.cutout > 0
        # feed only what the graph uses (DALI warns about unused source outputs, and they cost a copy)
        self._params = (["start", "mirror"] if aug.enabled else []) + (["hole"] if cutout else [])
        dtype = {"start": types.INT32, "mirror": types.INT32, "hole": types.FLOAT}
        with pipe:
            # cuda_stream unset: DALI copies a torch CUDA tensor on torch's current stream of the
            # thread that calls the source, which is ours (sources run inside `pipe.run`), so the copy
            # waits for the gather; the gathered tensor may then be freed (no_copy=False).
            images = fn.external_source(source=self._image_source, batch=True, layout="HWC",
                                        dtype=types.UINT8, device="gpu" if self.gpu else "cpu")
            fed = {}
            if self._params:
                nodes = fn.external_source(source=self._param_source, num_outputs=len(self._params),
                                           batch=True, dtype=[dtype[f] for f in self._params])
                fed = dict(zip(self._params, nodes))
            if aug.enabled:  # a 32x32 window of the padded image, at (dy, dx): the padded crop
                images = fn.slice(images, start=fed["start"], shape=[32, 32], axis_names="HW")
            # the exact float32 values the torch backend uses (mean and std of 0..255 pixels)
            x = fn.crop_mirror_normalize(
                images, mirror=fed["mirror"] if aug.enabled else 0,
                mean=self.mean.flatten().cpu().tolist(), std=self.std.flatten().cpu().tolist(),
                dtype=types.FLOAT, output_layout="HWC" if self.channels_last else "CHW")
            if cutout:
                # top-left corner (cy - c//2, cx - c//2), side c; erase clips a square that overhangs
                x = fn.erase(x, anchor=fed["hole"], shape=[float(aug.cutout)] * 2, axis_names="HW",
                             fill_value=0.0)
            pipe.set_outputs(x)
        pipe.build()
        return pipe

    def _epoch_arrays(self):
        """The current plan as the sources slice it (built once per epoch): sample indices on the
        device (the gather runs there), per-sample parameters as host arrays (DALI argument inputs)."""
        plan = self.plan()
        if self._arrays is None or self._arrays[0] is not plan:
            c = self.augment.cutout
            host = {
                "start": np.ascontiguousarray(torch.stack([plan.dy, plan.dx], 1).numpy().astype(np.int32)),
                "mirror": plan.flip.numpy().astype(np.int32),
                "hole": np.ascontiguousarray(torch.stack([plan.cy - c // 2, plan.cx - c // 2], 1).numpy()
                                             .astype(np.float32)),
            }
            self._arrays = (plan, plan.indices.to(self.device, non_blocking=True), host)
        return self._arrays

    def _feed(self, batch: torch.Tensor):
        """What the images source hands DALI: the CUDA tensor itself on a GPU (no host copy), a numpy
        view of the CPU tensor on a CPU. The one line where the two paths differ."""
        return batch if self.gpu else batch.numpy()

    def _image_source(self):
        k = next(self._todo_images)  # StopIteration ends DALI's epoch
        idx = self._arrays[1][self.batch_slice(k)]
        return self._feed(self.images[idx.clamp(min=0)])  # evaluation padding (-1) renders image 0

    def _param_source(self):
        k = next(self._todo_params)
        s = self.batch_slice(k)
        return [self._arrays[2][f][s] for f in self._params]

    def _to_torch(self, out) -> torch.Tensor:
        """The output batch as a torch tensor without a copy. DALI 2.x's default (dynamic) executor
        gives every run fresh, reference-counted output memory, so the tensor stays valid after later
        runs (no ring buffer to copy out of before the next `run()`); DALI's own PyTorch iterator uses
        DLPack the same way with this executor. `run` was given torch's current stream, so the output
        is ready in that stream's order; torch.from_dlpack passes the same stream to __dlpack__."""
        return torch.from_dlpack(out.as_tensor())

    # -- the interface -----------------------------------------------------------------------------
    def _render(self, ks: range):
        if self._pipe is None or self._dirty:
            self._pipe = self._build()  # ~5 ms on this CPU; only after an abandoned pass
        pipe = self._pipe
        # the plan is fixed for the whole pass (a set_epoch in the middle does not mix epochs)
        self._todo_images, self._todo_params = iter(ks), iter(ks)
        arrays = self._epoch_arrays()
        idx = arrays[1]
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
                x = x.to(self.dtype)
                yield x, batch_labels(self.labels, idx[self.batch_slice(k)])
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

    def _batch(self, k: int):
        (batch,) = self._render(range(k, k + 1))  # drains the pipeline: no rebuild on the next pass
        return batch
