# The README's two commands live here, so CI (.ci/run) runs exactly what a new user runs.
#   make quickstart   set up .venv, unpack CIFAR-10 into data/, train the quickstart recipe (a few minutes on a CPU)
#   make test         set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell $(PYTHON) -c "import hashlib,sys;print(hashlib.md5(open('pyproject.toml','rb').read()).hexdigest()[:8])")
PACK := ../shared/tools/cifar10_pack.py
PYTEST_ARGS ?=

.PHONY: setup data quickstart train test

# PyPI's torch/torchvision pair (CUDA builds, ~2.9 GB) runs on a CPU too, and torchvision works with it;
# DALI's CUDA 13 wheel also runs on a CPU (device_id=None), so the tests exercise every backend here.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dali,test]'
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

# The real CIFAR-10: from this project's packed copy when it is beside the checkout; otherwise
# harness.train downloads the python version itself (data.download=true) when online.
data: setup
	@if [ -f data/cifar-10-batches-bin/test_batch.bin ] || [ -f data/cifar-10-batches-py/test_batch ]; then \
		echo "data/ already holds CIFAR-10"; \
	elif [ -f $(PACK) ]; then $(BIN)/python $(PACK) unpack --out data; \
	else echo "no packed copy at $(PACK): harness.train will download CIFAR-10 into data/"; fi

quickstart: data
	$(BIN)/accelerate launch harness/train.py --config configs/quickstart.yaml

# the full default (resnet18, seeds' recipe, bf16 + channels_last + compile): for a GPU machine
train: data
	$(BIN)/accelerate launch harness/train.py

# one thread per worker: two xdist workers fill the 2 cores; more threads only spin against each other
test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --durations=15 $(PYTEST_ARGS)
