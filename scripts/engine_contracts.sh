#!/usr/bin/env bash
# The engine contract suite (tests/engines): bbt's requests checked by vLLM's and SGLang's
# own code.
#
# Builds .venv-engines once (gitignored; CI caches it): each pinned vLLM wheel installed
# --no-deps into its own folder, plus the few pure-Python packages its request models,
# sampling params, tensor loader and chat renderer import. torch (CPU), transformers,
# tokenizers, pydantic and jinja2 come from the project venv (bbt[vllm] and bbt[serve]).
# Each pinned SGLang wheel likewise (its request code runs from source, needing only msgspec,
# pyzmq and torch; tests/engines/_sglang_source.py). Then runs tests/engines once per vLLM
# version and once per SGLang version. No GPU, no model download.
#
#   scripts/engine_contracts.sh                 # the versions below
#   BBT_VLLM_VERSIONS="0.34.0" BBT_SGLANG_VERSIONS="" scripts/engine_contracts.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ENG=.venv-engines
# The oldest vLLM bbt supports (bbt.vllm.MIN_VLLM_VERSION) and the newest checked.
VERSIONS=${BBT_VLLM_VERSIONS-"0.26.0 0.34.0"}
# The oldest SGLang bbt supports (bbt.sglang.MIN_SGLANG_VERSION: the first with /tokenize)
# and the newest checked.
SGLANG_VERSIONS=${BBT_SGLANG_VERSIONS-"0.5.4 0.5.23"}
DEPS="openai==3.57.0 sniffio==1.3.1 cbor2==6.3.0 pyzmq==27.3.0 openai-harmony==0.0.8
pybase64==1.5.1 msgspec==0.23.0 py-cpuinfo==9.0.0"

if ! "$PY" -c "import torch, transformers, tokenizers, jinja2" 2>/dev/null; then
    "$PY" -m pip install -q torch==2.13.0 transformers tokenizers jinja2
fi
stamp=$(echo "$DEPS" | tr -s ' \n' ' ')
if [ "$(cat "$ENG/deps/.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$ENG/deps"
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-deps --target "$ENG/deps" $DEPS
    echo "$stamp" > "$ENG/deps/.stamp"
fi
for v in $VERSIONS; do
    if [ ! -f "$ENG/vllm-$v/.stamp" ]; then
        rm -rf "$ENG/vllm-$v"
        "$PY" -m pip install -q --no-deps --target "$ENG/vllm-$v" "vllm==$v"
        echo "$v" > "$ENG/vllm-$v/.stamp"
    fi
done
for v in $SGLANG_VERSIONS; do
    if [ ! -f "$ENG/sglang-$v/.stamp" ]; then
        rm -rf "$ENG/sglang-$v"
        "$PY" -m pip install -q --no-deps --target "$ENG/sglang-$v" "sglang==$v"
        echo "$v" > "$ENG/sglang-$v/.stamp"
    fi
done
for v in $VERSIONS; do
    echo "== engine contracts: vLLM $v"
    # importlib mode: the default mode puts tests/ on sys.path, where tests/vllm would shadow
    # the vllm package. vLLM's own import-time deprecation warnings are not bbt's.
    BBT_VLLM_VERSION=$v PYTHONPATH="$PWD:$ENG/vllm-$v:$ENG/deps" HF_HUB_OFFLINE=1 \
        "$PY" -m pytest -q --import-mode=importlib -p no:randomly -m engines \
        -W ignore::DeprecationWarning -W ignore::FutureWarning -W ignore::UserWarning \
        tests/engines
done
for v in $SGLANG_VERSIONS; do
    echo "== engine contracts: SGLang $v"
    BBT_SGLANG_VERSION=$v PYTHONPATH="$PWD:$ENG/sglang-$v:$ENG/deps" HF_HUB_OFFLINE=1 \
        "$PY" -m pytest -q --import-mode=importlib -p no:randomly -m engines \
        -W ignore::DeprecationWarning -W ignore::FutureWarning -W ignore::UserWarning \
        tests/engines
done
