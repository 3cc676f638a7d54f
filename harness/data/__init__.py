"""Data: CIFAR files on disk (cifar.py); the loader interface (interface.py); one file per backend
(torch_loader.py, dali.py, synthetic.py); choosing and building a loader (loaders.py)."""
