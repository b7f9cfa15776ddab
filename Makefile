# segnotes: two commands do everything on a fresh machine.
#   make book   build the HTML book into _build/html
#   make test   unit tests, nbval over every notebook, strict book build, browser check
# Both create or refresh .venv first (it is rebuilt when pyproject.toml changes).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
JB := $(VENV)/bin/jupyter-book
# pip prints one warning per package for unused local index folders on some machines; drop only those.
PIP := $(PY) -m pip install --progress-bar off -q
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }
# Notebooks run without progress bars (nothing to store). OpenMP keeps its default spin-waiting threads:
# OMP_WAIT_POLICY=PASSIVE made the small training steps of the book 1.5-2.4x slower on an idle 2-core machine.
NB_ENV := SEGNOTES_PROGRESS=0
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg

.PHONY: help book test lint unit nbval strict-build browser-check bench execute clean

help:
	@echo "make book   build the HTML book into _build/html"
	@echo "make test   unit tests + nbval + strict book build + browser check"
	@echo "make bench  run benchmarks/ and rewrite benchmarks/README.md"
	@echo "make execute NB=book/xx.ipynb   re-run a notebook top to bottom, storing its outputs"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.book: pyproject.toml | $(PY)
	$(PIP) -e ".[book]" 2>&1 | $(QUIET_PIP)
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

$(VENV)/.test: pyproject.toml | $(PY)
	$(PIP) -e ".[test]" 2>&1 | $(QUIET_PIP)
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@ $(VENV)/.book

book: $(VENV)/.book
	$(JB) build . -W -n --keep-going
	@echo "Book: $(CURDIR)/_build/html/index.html"

test: lint unit nbval strict-build browser-check

lint: $(VENV)/.test
	$(VENV)/bin/ruff check segnotes tests benchmarks
	$(VENV)/bin/ruff format --check segnotes tests benchmarks

unit: $(VENV)/.test
	$(PY) -m pytest tests -q --ignore=tests/browser

nbval: $(VENV)/.test
	$(NB_ENV) $(PY) -m pytest $(NBVAL) book -q --durations=0 --durations-min=20

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

clean:
	rm -rf _build
