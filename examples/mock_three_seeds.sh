#!/usr/bin/env bash
# The acceptance check: `bbt tune` against the mock server on its built-in task, 3 seeds,
# 1,000 API calls each. Prints the dev accuracy of p0 (z = 0) and of the selected prompt.
#
#     bash examples/mock_three_seeds.sh            # uses .venv/bin/bbt, port 8765
#     MOCK_ARGS=--causal bash examples/mock_three_seeds.sh   # the mock as a causal LM
#     SEEDS="1 2" BUDGET=200 bash examples/mock_three_seeds.sh  # quicker (tests/test_examples.py)
set -euo pipefail
BBT=${BBT:-.venv/bin/bbt}
PORT=${PORT:-8765}
OUT=${OUT:-${TMPDIR:-/tmp}/bbt-mock-seeds}
SEEDS=${SEEDS:-1 2 3}
BUDGET=${BUDGET:-1000}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
mkdir -p "$OUT"
# shellcheck disable=SC2086 # MOCK_ARGS: extra mock-server flags, word-split on purpose
"$BBT" mock-server --port "$PORT" ${MOCK_ARGS:-} >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
# shellcheck disable=SC2086 # SEEDS: a list of seeds, word-split on purpose
for seed in $SEEDS; do
  rm -rf "$OUT/seed$seed"
  "$BBT" tune --task mock --base-url "http://127.0.0.1:$PORT" --seed "$seed" \
    --budget "$BUDGET" --out "$OUT/seed$seed" -q
  python3 - "$OUT/seed$seed/manifest.json" "$seed" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
r = m["result"]
rows = [json.loads(x) for x in open(sys.argv[1].replace("manifest.json", "history.jsonl"))]
first = next((x["calls"] for x in rows if (x["dev_metric"] or 0) >= 0.9), None)
print(f"seed {sys.argv[2]}: dev accuracy {r['initial_dev_accuracy']:.4f} (p0) -> "
      f"{r['dev_accuracy']:.4f}, first >= 0.90 at {first} calls, selected at "
      f"{r['selected_at_calls']} of {r['calls']} calls")
PY
done
