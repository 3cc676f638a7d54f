"""Evaluation: exact accuracy, top-5 accuracy and loss over all processes, with optional test-time
augmentation (train.tta: none, flip or flip_translate), the accuracy on a named subset of the split
(data.test_subset), its own clock, and a progress display. The one evaluation: the loop, a resumed start
that owes one (a stop cut it short) and the final summary call it.

Exact across ranks: evaluation loaders pad the last batch with label -1 (never counted) so every rank
runs the same number of equal-shape batches, and the counts are summed over ranks: no sample is dropped
or counted twice, whatever the number of processes. Everything is summed on the device and read once, at
the end (one all-reduce, one host sync per split): top-5 and the subset cost no sync per batch.

The subset is a per-position flag over the loader's own evaluation order (`subset_flags`, built once from
its plan): the same pass scores it, where a loader of its own would run the model again on those images
(1,000 more images per evaluation for test_exact.json); the flags follow each rank's shard, so the subset
is exact across ranks like the rest.

The clock (`seconds`): from the device idle to the results on the host. The final evaluation's is
summary.json's time_s_with_final_eval - time_s, the part airbench94_muon's published time includes.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from harness.console import Progress

TOP_K = 5  # top-5 accuracy; reported only with more than 5 classes (with 5 or fewer it is always 1)
# Off a terminal, a progress line at most this often: resnet18 on 10,000 test images took 127 s on a
# 2-core CPU, silent; a GPU evaluation of a few seconds prints nothing
EVAL_LINE_EVERY_S = 30.0


class Interrupted(Exception):
    """Evaluation stopped early because a stop (SIGTERM/SIGUSR1) was agreed by all ranks."""


def tta_logits(model, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """float32 logits averaged over the test-time views (train.tta): none: the image; flip: the image and
    its mirror; flip_translate: that pair at weight 1/2, plus the pairs shifted one pixel up-left and
    down-right (reflect padding) at 1/4 each: 6 views, airbench94's level-2 TTA."""

    def logits(v: torch.Tensor) -> torch.Tensor:
        # a copy, always (`.float()` copies a bf16 output but returns an fp32 one as it is): under the
        # CUDA-graph compile modes (reduce-overhead, max-autotune) the output lives in a buffer the graph
        # owns, and the next view's replay overwrites it before the views are summed
        return model(v).to(torch.float32, copy=True)

    if tta == "none":
        return logits(x)

    def pair(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (logits(v) + logits(v.flip(3)))

    if tta == "flip":
        return pair(x)
    h, w = x.shape[-2:]
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left = padded[..., :h, :w].contiguous(memory_format=fmt)  # content moves down-right by one pixel
    down_right = padded[..., 2:, 2:].contiguous(memory_format=fmt)
    return 0.5 * pair(x) + 0.25 * pair(up_left) + 0.25 * pair(down_right)


def subset_flags(loader, mask: np.ndarray) -> torch.Tensor:
    """For every position of `loader`'s evaluation order (this rank's shard, padding included): is the image
    there in the subset `mask` ((n,) bool over the split)? A bool tensor on the loader's device, built once."""
    idx = loader.plan().indices
    member = torch.as_tensor(np.asarray(mask, dtype=bool))
    return ((idx >= 0) & member[idx.clamp(min=0)]).to(loader.device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model, loader, accelerator, num_classes: int, tta: str = "none", should_stop=None, *,
             subset: torch.Tensor | None = None, progress: bool = False, name: str = "") -> dict:
    """{'acc', 'loss', 'n', 'per_class', 'top5', 'subset_acc', 'subset_n', 'seconds'} of `model` over
    `loader` with train.tta's views. `subset`: `subset_flags` of the loader (else subset_acc and subset_n
    are None); top5 is None with 5 classes or fewer. `should_stop()` is asked after every batch (it must
    give every rank the same answer at the same batch); True raises Interrupted. `progress`: a transient
    progress display named `name` (harness.console.Progress: a bar on a terminal, rare lines elsewhere)."""
    was_training = model.training
    model.eval()
    dev = accelerator.device
    _synchronize(dev)  # the clock starts with the device idle: `seconds` is this evaluation alone
    t0 = time.perf_counter()
    correct = torch.zeros(num_classes, device=dev, dtype=torch.float64)
    total = torch.zeros(num_classes, device=dev, dtype=torch.float64)
    sums = torch.zeros(4, device=dev, dtype=torch.float64)  # loss, top-5 hits, subset hits, subset images
    k = min(TOP_K, num_classes)
    shown = Progress(len(loader), desc=f"eval {name}".strip(), unit="batch", show=progress,
                     every_s=EVAL_LINE_EVERY_S, leave=False)
    position = 0
    try:
        for x, y in loader:
            with accelerator.autocast():
                logits = tta_logits(model, x, tta)
            valid = (y >= 0).double()
            onehot = F.one_hot(y.clamp(min=0), num_classes).double() * valid[:, None]
            hit = logits.argmax(1) == y  # padding (-1) never hits
            total += onehot.sum(0)
            correct += (onehot * hit.double()[:, None]).sum(0)
            sums[0] += F.cross_entropy(logits, y, ignore_index=-1, reduction="sum").double()
            sums[1] += (logits.topk(k, 1).indices == y[:, None]).any(1).double().sum()
            if subset is not None:
                member = subset[position:position + len(y)]
                sums[2] += (hit & member).double().sum()
                sums[3] += member.double().sum()
            position += len(y)
            shown.update(1)
            if should_stop is not None and should_stop():
                raise Interrupted
    finally:
        shown.close()
        model.train(was_training)
    reduced = accelerator.reduce(torch.cat([correct, total, sums]), "sum")
    correct, total, sums = reduced[:num_classes], reduced[num_classes:2 * num_classes], reduced[2 * num_classes:]
    loss, top_hits, subset_hits, subset_n = sums.tolist()  # the one host sync
    n = total.sum().item()
    return {"acc": correct.sum().item() / max(n, 1), "loss": loss / max(n, 1), "n": int(n),
            "per_class": (correct / total.clamp(min=1)).tolist(),
            "top5": top_hits / max(n, 1) if num_classes > TOP_K else None,
            "subset_acc": subset_hits / subset_n if subset is not None and subset_n else None,
            "subset_n": int(subset_n) if subset is not None else None,
            "seconds": time.perf_counter() - t0}


def evaluate_all(model, ema, loaders: dict, accelerator, num_classes: int, tta: str = "none",
                 should_stop=None, *, subsets: dict | None = None, progress: bool = False) -> dict | None:
    """`evaluate` on every split ('val', 'test'), each with its subset flags from `subsets` if any: the EMA
    weights when EMA is on (they are the ones the run reports and exports), else the model. None when
    `should_stop` cut it short (a resumed run redoes it)."""
    if ema is not None:
        ema.sync(accelerator)
    net = ema.module if ema is not None else model
    try:
        return {name: evaluate(net, loader, accelerator, num_classes, tta, should_stop,
                               subset=(subsets or {}).get(name), progress=progress, name=name)
                for name, loader in loaders.items()}
    except Interrupted:
        return None


@torch.no_grad()
def warm_up_evaluation(model, ema, loaders: dict, accelerator, tta: str = "none") -> None:
    """One batch of each evaluation loader through the net `evaluate_all` uses, in eval mode, results
    dropped (train.warmup_run): the evaluation's graph (torch.compile recompiles for eval mode) and cuDNN's
    choices are made before the clock, as airbench's warm-up run does, so the timed final evaluation is the
    evaluation alone. Eval mode changes no weight or statistic. Every rank must call it (DDP's forward)."""
    net = ema.module if ema is not None else model
    was_training = net.training
    net.eval()
    try:
        for loader in loaders.values():
            for x, _ in loader:  # the first batch only: every batch has its shape (padded)
                with accelerator.autocast():
                    tta_logits(net, x, tta)
                break
    finally:
        net.train(was_training)
    _synchronize(accelerator.device)
