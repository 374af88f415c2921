# One-command set-up: `make demo` tunes a prompt on the embedded default model,
# `make test` runs the whole check suite (what CI runs), the core-only install checks included.
# Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

# Which PyTorch build .venv gets (the [serve] extra needs it; the client and tuner do not):
#   cpu    the CPU build from PyTorch's CPU index (a few hundred MB). On Linux PyPI's plain
#          `torch` is the CUDA build, several GB, which a machine without a GPU never uses.
#   cuda   PyPI's Linux build, with CUDA: for a machine with an NVIDIA GPU.
#   local  whatever pip is already set up to find (pip.conf, PIP_INDEX_URL, PIP_FIND_LINKS),
#          with no index added: the default where PIP_FIND_LINKS is set, as on this project's
#          machines, whose CPU wheel lies on disk.
# TORCH_SPEC (the requirement) and TORCH_INDEX (the index it comes from) override either part.
# Switching build in an existing .venv: `make clean` first.
TORCH_VERSION ?= 2.13.0
TORCH ?= $(if $(PIP_FIND_LINKS),local,cpu)
TORCH_SPEC ?= torch==$(TORCH_VERSION)
ifeq ($(TORCH),cpu)
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
else ifeq ($(filter $(TORCH),cuda local),)
$(error TORCH must be cpu, cuda or local, not '$(TORCH)')
endif
TORCH_INDEX ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))

.PHONY: install test lint demo demo-full newcomer clean docs docs-build
.PHONY: test-core test-core-lowest

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '$(TORCH_SPEC)' $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -e '.[dev,serve]'
	touch $@

install: $(VENV)/.installed

# The suite also tests the optional parts, so only `make test` installs their extras: ray
# (the Ray Serve test, ~80 MB), sklearn (BBTClassifier, the probe heads, the gp optimiser,
# compare's probes), data (Parquet, saved datasets), mlflow (the tracking callback) and
# whitebox (peft: compare's white-box rows, bbt pretrain). `make demo` stays light.
$(VENV)/.test-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev,serve,ray,sklearn,data,mlflow,whitebox]'
	touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(VENV)/.test-installed lint docs-build
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest
	$(MAKE) test-core test-core-lowest

# The core install alone (`pip install bbt`, no extras), in a fresh temp venv: import bbt,
# bbt --help, a short tune/eval/predict on the mock (scripts/check_core_install.sh). .venv has
# every extra, and an extra can bring what the core forgot to declare (uvicorn brought click).
# test-core: the newest releases pyproject.toml allows; test-core-lowest: the lowest ones
# (uv's lowest-direct), so a lower bound that lies fails here first. Each needs PyPI, < 2 min.
test-core:
	PYTHON=$(PYTHON) scripts/check_core_install.sh highest

test-core-lowest:
	PYTHON=$(PYTHON) scripts/check_core_install.sh lowest

# `make demo`: the embedded default (MiniLM + shipped MLM head; bfloat16 where the CPU runs it
# natively, else float32) tunes AG News 8-shot with a 10-token prompt, d=200, a population of
# 10 and 240 API calls, predicts two headlines, and ends by printing the held-out accuracy of
# p0 and of the tuned prompt on examples/data/agnews_test.tsv (200 rows it never tuned on).
# The settings are the cheapest measured ones that keep the gain (docs/server.md, "make demo"):
# benchmarks/embedded_quality.py, 3 seeds, 500 held-out rows: p0 33.2% -> 61.9% (+28.7 points),
# as good as 400 calls with a population of 20, for a quarter of demo-full's tuning CPU time.
# `make demo` on 2 cores held to AVX2 kernels in float32 (ATEN_CPU_CAPABILITY=avx2 ...
# BBT_EMBEDDED_DTYPE=float32, the command in docs/server.md): 2 min 15 s wall on a quiet
# machine (1 min 11 s with native bfloat16), start-up included; held-out 33.0% -> 55.0% on
# examples/data/agnews_test.tsv, and 32.5% -> 58.8% (+26.3 points) natively, mean of seeds 0-2.
# `make demo-full`: the settings before (16-shot, a population of 20, 600 calls; tuning 181 s
# with native bfloat16, 636 s on 2 cores held to AVX2 kernels; held-out 36.7% with the manual
# prompt -> 63.1%, mean of 3 seeds on 1,000 rows).
# DEMO_SEED picks the k-shot draw, the projection and CMA-ES (default 0); DEMO_DIR the run
# directory. The embedded server's dtype, threads and device come from BBT_EMBEDDED_DTYPE,
# BBT_EMBEDDED_THREADS and BBT_EMBEDDED_DEVICE when set (e.g. BBT_EMBEDDED_DEVICE=cuda).
DEMO_STAMP := $(shell date +%Y%m%d-%H%M%S)
DEMO_DIR ?= runs/demo-agnews-$(DEMO_STAMP)
DEMO_SEED ?= 0
DEMO_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
DEMO_QUICK := -k 8 -n 10 -d 200 --init vocab:1000 --popsize 10 --budget 240 --eval-every 100
DEMO_FULL := -k 16 -n 10 -d 200 --init vocab:1000 --budget 600 --eval-every 100

demo: DEMO_SETTINGS = $(DEMO_QUICK)
demo-full: DEMO_SETTINGS = $(DEMO_FULL)
demo demo-full: install
	$(DEMO_ENV) $(VENV)/bin/bbt tune --task agnews --data examples/data/agnews.tsv \
		$(DEMO_SETTINGS) --seed $(DEMO_SEED) --out $(DEMO_DIR)
	ln -sfn $(abspath $(DEMO_DIR)) runs/demo-agnews    # README's commands use the latest demo
	$(DEMO_ENV) $(VENV)/bin/bbt predict $(DEMO_DIR) \
		"Oil prices climb as OPEC signals output cuts" \
		"The striker scored twice as United won the derby"
	$(DEMO_ENV) $(VENV)/bin/bbt eval $(DEMO_DIR) --data examples/data/agnews_test.tsv --baseline

# `make newcomer`: what a new user does, checked. scripts/newcomer.sh clones this checkout into
# a temporary directory and runs README.md's shell commands there in order (a fresh .venv, the
# demo, the commands after it), stopping at the first that fails; CI runs it after `make test`.
newcomer:
	scripts/newcomer.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# The docs site (mkdocs.yml): `make docs` serves it at http://127.0.0.1:8000 and rebuilds on
# every edit; `make docs-build` builds it into site/ with --strict, so a broken link or anchor,
# a page missing from the nav or a docstring griffe cannot parse fails it. `make test` runs
# docs-build, so CI (which runs `make test`) checks the docs too. The docs get their own venv:
# the API reference is read from the source, so they need neither torch nor the server extras,
# and `make docs` stays quick on a fresh clone. Its packages come from PyPI by name.
DOCS_VENV ?= .venv-docs
# mkdocs-material prints an advertising banner about MkDocs 2 on every build.
DOCS_ENV := NO_MKDOCS_2_WARNING=1

$(DOCS_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/python -m pip install -q --upgrade pip
	$(DOCS_VENV)/bin/python -m pip install -q -e '.[docs]'
	touch $@

docs: $(DOCS_VENV)/.installed
	$(DOCS_ENV) $(DOCS_VENV)/bin/mkdocs serve

docs-build: $(DOCS_VENV)/.installed
	$(DOCS_ENV) $(DOCS_VENV)/bin/mkdocs build --strict
