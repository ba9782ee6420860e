# Two entry points for a fresh clone (see README):  make run  (builds the book)  and  make test.
# Each creates .venv on first use, installs the exact versions of requirements.lock, and fetches data.
# make LOCK=0 ... installs from pyproject.toml's ranges instead (other platforms, newer versions).
PYTHON  ?= python3
PROFILE ?= smoke
LOCK    ?= 1
VENV    := .venv
TOOLS   := .venv-tools
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(if $(filter 0,$(LOCK)),ranges,lock)

.PHONY: run test test-lock test-unit test-notebooks test-book test-faults book reproduce pdf screenshots data bench lock clean-runs

run: book  ## main job: the HTML book from the committed executed notebooks -> book/_build/html/index.html

book: $(STAMP)  ## the HTML book of the most complete committed profile (no data or training needed)
	$(PY) -m aalp book

reproduce: data  ## execute the notebooks of PROFILE (smoke | cpu | paper); unchanged ones are skipped
	$(PY) -m aalp reproduce --profile $(PROFILE)

test: test-lock test-unit test-notebooks test-book  ## everything CI runs

test-lock: $(STAMP)  ## requirements.lock pins pyproject.toml within its ranges; with the lock, .venv matches it
	$(PY) .ci/check_lock.py $(if $(filter 0,$(LOCK)),,--installed)

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
	  --virtual-time-budget=10000 --print-to-pdf=$(CURDIR)/book.pdf file://$(CURDIR)/book/_build/singlehtml/intro.html
	AALP_PDF_BUILT=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_pdf.py

screenshots:  ## full pages of the book, desktop and phone, in headless Chromium -> book/screenshots/ (after make run)
	$(PY) .ci/screenshots.py

bench: data  ## training / evaluation throughput vs a reference loop and the FLOP floor (~30 min on 2 cores)
	$(PY) benchmarks/bench.py

data: $(STAMP)  ## MNIST + Fashion-MNIST into data/, verified by SHA-256 (offline sources if needed)
	$(PY) -m aalp data fetch mnist fashion-mnist

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
ifeq ($(LOCK),0)
	$(PY) -m pip install --quiet -e '.[dev]'
else
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e '.[dev]'
endif
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

lock:  ## regenerate requirements.lock from pyproject.toml (pip-tools in .venv-tools; keeps the pins that still fit)
	test -x $(TOOLS)/bin/pip-compile || { $(PYTHON) -m venv $(TOOLS) && $(TOOLS)/bin/pip install --quiet pip-tools==7.6.2; }
	CUSTOM_COMPILE_COMMAND='make lock' $(TOOLS)/bin/pip-compile --quiet --extra dev --strip-extras --allow-unsafe \
	  --no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml

clean-runs:  ## delete the local run cache of the CLI (runs/); results/<profile>/ are left alone
	rm -rf runs
