# Two commands on a fresh machine: `make book` and `make test`.
# Both create .venv if it is missing and install everything into it.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
TORCH   ?= torch==2.13.0
# The CPU build keeps the install small on machines without a GPU. A wheel that pip
# already finds locally is used as is; otherwise it comes from PyTorch's CPU index.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP   := $(VENV)/.metabook-installed
BUILD   := _build
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup book test unit notebooks book-strict bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-index "$(TORCH)" 2>/dev/null \
	  || $(PY) -m pip install -q "$(TORCH)" --index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple
	$(PY) -m pip install -q -e ".[book,test]"
	touch $@

setup: $(STAMP)  ## create .venv and install metabook with the book and test extras

book: $(STAMP)  ## execute every chapter and render the HTML book into _build/html
	$(VENV)/bin/jupyter-book build . --path-output . --keep-going
	@echo "Book: $(BUILD)/html/index.html"

unit: $(STAMP)  ## unit tests of the package
	$(PY) -m pytest -q

notebooks: $(STAMP)  ## run every chapter under nbval (a cell that raises fails)
	$(PY) -m pytest --nbval-lax --nbval-cell-timeout=900 chapters -q -p no:cacheprovider

book-strict: $(STAMP)  ## build the book, failing on any warning
	$(VENV)/bin/jupyter-book build . --path-output . -W --keep-going

test: unit notebooks book-strict  ## unit tests, every notebook under nbval, and a warning-free book build
	@echo "make test: all checks passed"

clean:  ## remove the build output (keeps .venv)
	rm -rf $(BUILD)
