# The README's two commands live here, so CI (.ci/run) runs exactly what a new user runs.
#   make quickstart   set up .venv, unpack CIFAR-10 into data/, train the quickstart recipe (a few minutes on a CPU)
#   make test         set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell $(PYTHON) -c "import hashlib;print(hashlib.md5(open('pyproject.toml','rb').read()+open('constraints.txt','rb').read()).hexdigest()[:8])")
PACK := ../shared/tools/cifar10_pack.py
PYTEST_ARGS ?=

.PHONY: setup lock data quickstart train test

# PyPI's torch/torchvision pair (CUDA builds, ~2.9 GB) runs on a CPU too, and torchvision works with it;
# DALI's CUDA 13 wheel also runs on a CPU (device_id=None), so the tests exercise every backend here.
# constraints.txt pins every package to the tested versions, so a fresh clone installs the same stack
# next month (an unpinned linter once turned the suite red overnight); `make lock` regenerates it.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dali,test]'
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

# Re-resolve pyproject.toml's ranges in a scratch venv and pin the result (then run `make test`, commit).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --disable-pip-version-check -e '.[dali,test]'
	{ echo "# The tested environment: every package 'make setup' installs, pinned (pip install -c constraints.txt)."; \
	  echo "# Regenerate with 'make lock' (a fresh venv from pyproject.toml's ranges, then pip freeze), run the tests, commit."; \
	  echo "# Resolved on $$(date -u +%F) for Python $$(.venv-lock/bin/python -c 'import platform;print(platform.python_version())') on linux x86_64."; \
	  .venv-lock/bin/pip freeze --exclude-editable --all | grep -v -E '^(pip|setuptools|wheel)=='; } > constraints.txt
	rm -rf .venv-lock

# The real CIFAR-10: from this project's packed copy when it is beside the checkout; otherwise
# harness.train downloads the python version itself (data.download=true) when online.
data: setup
	@if [ -f data/cifar-10-batches-bin/test_batch.bin ] || [ -f data/cifar-10-batches-py/test_batch ]; then \
		echo "data/ already holds CIFAR-10"; \
	elif [ -f $(PACK) ]; then $(BIN)/python $(PACK) unpack --out data; \
	else echo "no packed copy at $(PACK): harness.train will download CIFAR-10 into data/"; fi

quickstart: data
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		harness/train.py --config configs/quickstart.yaml

# the full default (resnet18, seeds' recipe, bf16 + channels_last + compile): for a GPU machine
train: data
	$(BIN)/accelerate launch harness/train.py

# one thread per worker: two xdist workers fill the 2 cores; more threads only spin against each other
test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --durations=15 $(PYTEST_ARGS)
