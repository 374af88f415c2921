# One-command set-up: `make demo` tunes a prompt on the embedded default model,
# `make test` runs the whole check suite (what CI runs). Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# A CPU build of torch: an unpinned `torch` pulls a multi-gigabyte CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test lint demo clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '$(TORCH_SPEC)'
	$(PY) -m pip install -q -e '.[dev,serve]'
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest

demo: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/bbt tune --help

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
