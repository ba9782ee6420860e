# Two entry points for a fresh clone (see README):  make run  (builds the book)  and  make test.
# Each creates .venv on first use, installs the package with pinned torch/torchvision, and fetches data.
PYTHON  ?= python3
PROFILE ?= smoke
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp

.PHONY: run test test-unit test-notebooks test-book test-faults book reproduce pdf data bench clean-runs

run: book  ## main job: the HTML book from the committed executed notebooks -> book/_build/html/index.html

book: $(STAMP)  ## the HTML book of the most complete committed profile (no data or training needed)
	$(PY) -m aalp book

reproduce: data  ## execute the notebooks of PROFILE (smoke | cpu | paper); unchanged ones are skipped
	$(PY) -m aalp reproduce --profile $(PROFILE)

test: test-unit test-notebooks test-book  ## everything CI runs

test-unit: data  ## unit tests (a few minutes on 2 cores)
	$(PY) -m pytest -q tests

test-faults: data  ## the fault suite alone; writes results/fault_suite.json and book/fault_suite.md
	$(PY) -m pytest -q -m faults tests

test-notebooks: data  ## every notebook executed by nbval at the smoke profile
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env notebooks/

test-book: data  ## build the smoke book with warnings as errors, then check the HTML
	$(PY) -m aalp book --profile smoke
	AALP_BOOK_BUILT=1 $(PY) -m pytest -q tests/test_book_html.py

pdf: data  ## book.pdf via the single-page build and headless Chromium (apt-get install chromium)
	$(PY) -m aalp book --builder singlehtml
	chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
	  --disable-sync --no-first-run --user-data-dir=$$(mktemp -d) --no-pdf-header-footer \
	  --virtual-time-budget=10000 --print-to-pdf=$(CURDIR)/book.pdf file://$(CURDIR)/book/_build/singlehtml/index.html

bench: data  ## training / evaluation throughput vs a reference loop and the FLOP floor (~30 min on 2 cores)
	$(PY) benchmarks/bench.py

data: $(STAMP)  ## MNIST + Fashion-MNIST into data/, verified by SHA-256 (offline sources if needed)
	$(PY) -m aalp data fetch mnist fashion-mnist

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean-runs:  ## delete the local run cache of the CLI (runs/); results/<profile>/ are left alone
	rm -rf runs
