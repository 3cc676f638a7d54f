"""Data: CIFAR files on disk (cifar.py) and the loaders that put batches on the device (loaders.py)."""
