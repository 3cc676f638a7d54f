"""What feeds the benchmark's steps: the CIFAR-10 training images (or random ones of the same shape when
the files are missing: speed does not depend on pixel values, and the outputs say which it was), seed
001's torchvision dataset and DataLoader, and the harness's own loaders (synthetic, torch, dali)."""
from __future__ import annotations

import numpy as np
import torch

from harness.bench.specs import BenchData, Spec


def load_images(data: BenchData) -> tuple[np.ndarray, np.ndarray, str]:
    """(images, labels, a sentence naming where they came from)."""
    from harness.data.cifar import DataError, load_dataset, random_split

    try:
        ds = load_dataset("cifar10", data.root, verify="structure", allow_download=False)
        images, labels = ds.train.images, ds.train.labels
        source = f"CIFAR-10 training set from {ds.source}"
    except DataError:
        split = random_split(data.limit_train or 50000)
        images, labels = split.images, split.labels
        source = (f"RANDOM images (CIFAR-10 files missing under {data.root}; `make data` puts them in data/, "
                  f"or point data.root at them)")
    if data.limit_train:
        images, labels = images[: data.limit_train], labels[: data.limit_train]
    return images, labels, f"{source}, {len(labels)} images"


# seed 001's Normalize constants (its std is the often-copied (0.2023, 0.1994, 0.2010), not the data set's)
SEED_MEAN, SEED_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
SEED_WORKERS = 2  # seed 001: DataLoader(train_dataset, batch_size=128, shuffle=True, num_workers=2)
LOADER_PREFETCH = 2  # DataLoader's default prefetch_factor: batches each worker renders ahead


def seed_dataset(images: np.ndarray, labels: np.ndarray, train: bool):
    """torchvision's CIFAR10 dataset with seed 001's transforms, over arrays already read (either official
    format): torchvision's own `__getitem__` (one PIL image at a time through the transforms), so the
    baseline pays exactly what the seed paid. torchvision's `__init__` is skipped because it reads only the
    python-format files; the arrays come from harness.data.cifar, which reads both."""
    from torchvision import transforms
    from torchvision.datasets import CIFAR10, VisionDataset

    augment = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train else []
    ds = CIFAR10.__new__(CIFAR10)
    VisionDataset.__init__(ds, root="", transform=transforms.Compose(
        augment + [transforms.ToTensor(), transforms.Normalize(SEED_MEAN, SEED_STD)]))
    ds.train, ds.data, ds.targets = train, images, [int(v) for v in labels]
    return ds


def num_workers(requested: int) -> int:
    return SEED_WORKERS if requested < 0 else requested


def queue_depth(data: str, workers: int, prefetch: int) -> int:
    """Batches a data source renders ahead on its own (DataLoader workers, DALI's prefetch queue), so they
    pile up while the other rows of a round run: the steps to run untimed before each timed block, or the
    block would start with that many free batches. The torch and synthetic sources render on demand."""
    if data == "loader":
        return workers * LOADER_PREFETCH
    return prefetch if data == "dali" else 0


class Images:
    """The training images, loaded on first use and kept for every later row."""

    def __init__(self, data: BenchData):
        self.data, self.images, self.labels = data, None, None
        self.source = "synthetic batches on the device"

    def get(self) -> tuple[np.ndarray, np.ndarray]:
        if self.images is None:
            self.images, self.labels, self.source = load_images(self.data)
        return self.images, self.labels


def harness_loader(backend: str, images, labels, batch_size: int, *, train: bool, data: BenchData,
                   device: torch.device, channels_last: bool, seed: int = 0, rank: int = 0, world: int = 1):
    """One of the harness's loaders as training builds it. float32 images for every precision: autocast
    casts them at the first layer, so all models accept them and rungs that differ only in data source
    share one compiled graph."""
    from harness.data.loaders import Augment, build_loader

    augment = Augment.from_config(data) if train else Augment()
    return build_loader(backend, images, labels, batch_size, train=train, rank=rank, world=world, seed=seed,
                        drop_last=True, augment=augment, device=device, dtype=torch.float32,
                        channels_last=channels_last, prefetch=data.prefetch,
                        synthetic_size=max(len(labels) if labels is not None else 50000, batch_size * world))


def batches(spec: Spec, batch_size: int, images: Images, *, device: torch.device, data: BenchData,
            workers: int, seed: int, rank: int, world: int):
    """Endless (images, labels) on the device from the spec's data source, epoch after epoch."""
    train = spec.mode == "train"
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    if spec.data == "loader":
        x_all, y_all = images.get()
        overlap = spec.overlap and device.type == "cuda"  # pinned memory and non_blocking mean nothing on a CPU
        # each rank shuffles with its own seed: the same cost as a DistributedSampler's shard
        loader = torch.utils.data.DataLoader(
            seed_dataset(x_all, y_all, train), batch_size=batch_size, shuffle=train, drop_last=True,
            num_workers=workers, pin_memory=overlap, prefetch_factor=LOADER_PREFETCH if workers else None,
            persistent_workers=workers > 0,  # repeats must not time worker start-up (warm-up did)
            generator=torch.Generator().manual_seed(seed + rank))
        while True:
            for x, y in loader:  # one copy per batch; synchronous in the seeds' loop
                yield (x.to(device, memory_format=memory_format, non_blocking=overlap),
                       y.to(device, non_blocking=overlap))
    x_all, y_all = images.get() if spec.data != "synthetic" else (None, None)
    loader = harness_loader(spec.data, x_all, y_all, batch_size, train=train, data=data, device=device,
                            channels_last=spec.channels_last, seed=seed, rank=rank, world=world)
    yield from loader.endless()
