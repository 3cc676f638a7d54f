"""Data: CIFAR files on disk (cifar.py), kept for the next run in the process (cache.py); the loader
interface (interface.py); one file per backend (torch_loader.py, dali.py, synthetic.py); choosing and
building a loader (loaders.py)."""
