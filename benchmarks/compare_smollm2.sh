#!/usr/bin/env bash
# bbt compare on a real decoder, SmolLM2-135M (bbt serve --model smollm2-135m, causal), at a
# scale two shared CPU cores allow: AG News and SST-2 rows of at most 140 characters (SST-2:
# at least 40), k=4 shots per class, 100 held-out rows, 3 seeds, budget 60, a 10-token soft
# prompt, 4 in-context demonstrations (docs/compare.md). Run from the repository root; writes
# benchmarks/results/compare-smollm2-{agnews,sst2}/. With BBT_BASE_URL set, that server is
# used; otherwise one is started on port 8761 for the runs and stopped after.
set -euo pipefail
DATA=${DATA:-../shared/data}
TASKS=${TASKS:-agnews sst2}
METHODS=${METHODS:-manual,manual-select,manual-ppl,icl,feature-lr,bbt}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# In-context inputs are long (8 demonstrations): give a request the time 2 cores need.
export BBT_TIMEOUT=${BBT_TIMEOUT:-900} BBT_TIMEOUT_PER_SEQUENCE=${BBT_TIMEOUT_PER_SEQUENCE:-2}
SHORT=$(mktemp -d)
awk -F'\t' 'NR==1 || length($1) <= 140' "$DATA/agnews/train.tsv" > "$SHORT/agnews.tsv"
awk -F'\t' 'NR==1 || (length($1) >= 40 && length($1) <= 140)' "$DATA/sst2/train.tsv" \
  > "$SHORT/sst2.tsv"
if [ -z "${BBT_BASE_URL:-}" ]; then
  bbt serve --model smollm2-135m --port 8761 --threads 1 > "$SHORT/serve.log" 2>&1 &
  SERVER=$!
  trap 'kill $SERVER' EXIT
  export BBT_BASE_URL=http://127.0.0.1:8761
  until curl -sf "$BBT_BASE_URL/healthz" > /dev/null; do sleep 2; done
fi
for task in $TASKS; do
  bbt compare --task "$task" --data "$SHORT/$task.tsv" --methods "$METHODS" \
    --seeds 3 --k-shot 4 --budget 60 --n-tokens 10 --n-test 100 --icl-demos 4 \
    --price-per-1k-tokens 0.0001 --out "benchmarks/results/compare-smollm2-$task"
done
