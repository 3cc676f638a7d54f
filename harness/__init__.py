"""harness: a distributed, optimised training harness for CNNs on CIFAR."""
__version__ = "0.1.0"
