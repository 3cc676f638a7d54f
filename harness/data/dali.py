"""The NVIDIA DALI backend: renders the batches of an `EpochPlan` with a DALI pipeline.

DALI draws no random numbers here. Python gathers batch k's uint8 images from the host arrays and
feeds them, with the plan's per-sample crop offsets, flips and cutout corners, through one batch-mode
`fn.external_source`; the pipeline only renders them. So a batch equals the torch backend's batch for
the same (seed, epoch, rank, k) up to float rounding, and resuming at (epoch, batch) is exact.

Pipeline graph (training, augmentation on; every operator after the source runs on the GPU when the
training device is CUDA, on the CPU otherwise):

    external_source -> images (B,32,32,3) uint8 HWC, start (B,2) int32, mirror (B,) int32,
                       hole (B,2) float32                                   [host, batch k of the plan]
    fn.slice(images, start=start, shape=(32,32), out_of_bounds_policy="pad")   padded random crop
    fn.crop_mirror_normalize(mirror=mirror, mean, std, FLOAT, HWC or CHW)     flip + normalise + layout
    fn.erase(anchor=hole, shape=(c,c), fill 0)                                cutout, if data.cutout > 0

Evaluation (or augmentation off) is external_source -> crop_mirror_normalize only.

The crop is `fn.slice` with absolute start (dy - padding, dx - padding) in the unpadded image and
zero fill outside it, which is exactly a crop of the zero-padded image. `crop_mirror_normalize` alone
cannot do it: its crop position is a fraction of (W - crop_w), which is 0 for a 32-wide crop of a
32-wide image.

Layout: with channels_last the pipeline emits HWC and torch's permute(0, 3, 1, 2) gives an NCHW tensor
with channels_last strides at no cost; otherwise it emits CHW, which is NCHW-contiguous. Either way no
extra copy. The pipeline emits float32 and torch casts to bf16/fp16, the same cast the torch backend
does, so both backends round identically.

CPU facts (DALI 2.4, measured here): a CPU-only pipeline needs `device_id=None`
(`CPU_ONLY_DEVICE_ID` fails); with the CPU torch build external_source wants numpy arrays.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from harness.data.loaders import Loader, batch_labels
from harness.errors import UserError


class DaliLoader(Loader):
    """DALI-rendered batches of the shared plan, `prefetch` batches ahead (DALI's prefetch queue)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, prefetch: int = 2, **kw):
        super().__init__(len(labels), batch_size, **kw)
        if prefetch < 1:
            raise UserError(f"data.prefetch={prefetch}: the DALI prefetch queue depth must be at least 1")
        self.prefetch = prefetch
        self.images = np.ascontiguousarray(images, dtype=np.uint8)  # host memory: gathered per batch
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.gpu = self.device.type == "cuda"
        if self.gpu:
            self.device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        # What the source feeds: the pass's batch indices, in order, and its plan as numpy arrays.
        # DALI calls the source `prefetch` batches ahead of what `_render` hands out.
        self._todo, self._arrays = iter(()), None
        self._host_plan = None  # (epoch plan, numpy arrays of it) for the source
        self._pipe = None
        self._pass = None
        self._dirty = False  # batches left in DALI's queue from an abandoned pass: rebuild

    # -- the pipeline ------------------------------------------------------------------------------
    def _build(self):
        from nvidia.dali import Pipeline, fn, types

        # The CPU stage is only the external source on a GPU; on a CPU every operator runs there and
        # DALI parallelises over samples.
        threads = 2 if self.gpu else max(1, min(4, os.cpu_count() or 1))
        pipe = Pipeline(batch_size=self.batch_size, num_threads=threads,
                        device_id=self.device_id if self.gpu else None,
                        prefetch_queue_depth=self.prefetch, seed=self.seed)
        aug = self.augment
        cutout = aug.enabled and aug.cutout > 0
        # feed only what the graph uses (DALI warns about unused source outputs, and they cost a copy)
        self._fed = ["images"] + (["start", "mirror"] if aug.enabled else []) + (["hole"] if cutout else [])
        layout = {"images": "HWC", "start": "", "mirror": "", "hole": ""}
        dtype = {"images": types.UINT8, "start": types.INT32, "mirror": types.INT32, "hole": types.FLOAT}
        with pipe:
            nodes = fn.external_source(source=self._source, num_outputs=len(self._fed), batch=True,
                                       layout=[layout[f] for f in self._fed], dtype=[dtype[f] for f in self._fed])
            fed = dict(zip(self._fed, nodes))
            images, start, mirror, hole = (fed.get(f) for f in ("images", "start", "mirror", "hole"))
            if self.gpu:
                images = images.gpu()
            if aug.enabled:
                images = fn.slice(images, start=start, shape=[32, 32], axis_names="HW",
                                  out_of_bounds_policy="pad", fill_values=0)
            # the exact float32 values the torch backend uses (mean and std of 0..255 pixels)
            x = fn.crop_mirror_normalize(
                images, mirror=mirror if aug.enabled else 0,
                mean=self.mean.flatten().cpu().tolist(), std=self.std.flatten().cpu().tolist(),
                dtype=types.FLOAT, output_layout="HWC" if self.channels_last else "CHW")
            if cutout:
                # top-left corner (cy - c//2, cx - c//2), side c; erase clips a square that overhangs
                x = fn.erase(x, anchor=hole, shape=[float(aug.cutout)] * 2, axis_names="HW", fill_value=0.0)
            pipe.set_outputs(x)
        pipe.build()
        return pipe

    def _host_arrays(self):
        """The current plan as the numpy arrays the source slices (built once per epoch)."""
        plan = self.plan()
        if self._host_plan is None or self._host_plan[0] is not plan:
            p, c = self.augment.padding, self.augment.cutout
            arrays = (
                plan.indices.clamp(min=0).numpy(),
                np.ascontiguousarray(torch.stack([plan.dy - p, plan.dx - p], 1).numpy().astype(np.int32)),
                plan.flip.numpy().astype(np.int32),
                np.ascontiguousarray(torch.stack([plan.cy - c // 2, plan.cx - c // 2], 1).numpy()
                                     .astype(np.float32)),
            )
            self._host_plan = (plan, arrays)
        return self._host_plan[1]

    def _source(self):
        k = next(self._todo)  # StopIteration ends DALI's epoch
        idx, start, mirror, hole = self._arrays
        s = self.batch_slice(k)
        arrays = {"images": self.images[idx[s]], "start": start[s], "mirror": mirror[s], "hole": hole[s]}
        return [arrays[f] for f in self._fed]

    def _to_torch(self, out) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = out.as_tensor()  # a view of the batch as one (B, ...) tensor
        t = torch.empty(dense.shape(), dtype=torch.float32, device=self.device)
        # DALI's output buffer is recycled `prefetch` runs later: copy it out, ordered on torch's stream
        feed_ndarray(dense, t, cuda_stream=torch.cuda.current_stream(self.device) if self.gpu else None)
        return t

    # -- the interface -----------------------------------------------------------------------------
    def _render(self, ks: range):
        if self._pipe is None or self._dirty:
            self._pipe = self._build()  # ~5 ms on this CPU; only after an abandoned pass
        pipe = self._pipe
        # the plan is fixed for the whole pass (a set_epoch in the middle does not mix epochs)
        self._todo, self._arrays = iter(ks), self._host_arrays()
        idx = self.plan().indices.to(self.device, non_blocking=True)
        self._dirty = True
        token = self._pass = object()  # the pipeline serves one pass at a time
        try:
            for k in ks:
                if self._pass is not token:
                    raise RuntimeError("a DaliLoader pass was resumed after a newer pass started; "
                                       "iterate one pass at a time")
                (out,) = pipe.run()
                x = self._to_torch(out)
                if self.channels_last:
                    x = x.permute(0, 3, 1, 2)  # NCHW shape, channels_last strides: a view
                x = x.to(self.dtype)
                yield x, batch_labels(self.labels, idx[self.batch_slice(k)])
            try:
                pipe.run()  # the source is exhausted: DALI ends its epoch with StopIteration
            except StopIteration:
                pass
            else:
                raise RuntimeError("DALI produced more batches than the plan has")  # a bug, not a user error
            pipe.reset()
            self._dirty = False
        finally:
            if self._pass is token:  # an old pass finalised late must not end the current one
                self._todo = iter(())

    def _batch(self, k: int):
        (batch,) = self._render(range(k, k + 1))  # drains the pipeline: no rebuild on the next pass
        return batch
