# Two entry points for a fresh clone (see README):  make run   (main job)   and   make test.
# Each creates .venv on first use, installs the package with pinned torch/torchvision, and fetches data.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test test-fast data clean-runs

run: data  ## train ALP and AALP (smoke profile) on real MNIST, evaluate, print clean and robust accuracy
	$(PY) -m aalp run --profile smoke --dataset mnist --methods alp aalp --quiet

test: data  ## the whole test suite (a few minutes on 2 cores)
	$(PY) -m pytest -q

test-fast: $(STAMP)  ## unit tests without the slow data-fetch tests
	$(PY) -m pytest -q -m "not slow"

data: $(STAMP)  ## MNIST + Fashion-MNIST into data/, verified by SHA-256 (offline sources if needed)
	$(PY) -m aalp data fetch mnist fashion-mnist

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean-runs:  ## delete the local run cache (trained models and evaluations)
	rm -rf runs
