#!/usr/bin/env bash
# bbt compare on the embedded MiniLM: AG News and SST-2, 3 seeds, k=8, budget 100,
# 200 held-out rows of each file kept out of every k-shot sample (docs/compare.md).
# Run from the repository root; writes benchmarks/results/compare-minilm-{agnews,sst2}/.
set -euo pipefail
DATA=${DATA:-../shared/data}
METHODS=${METHODS:-manual,manual-select,icl,feature-lr,feature-mlp,bbt,bbtv2}
for task in agnews sst2; do
  bbt compare --task "$task" --data "$DATA/$task/train.tsv" --methods "$METHODS" \
    --seeds 3 --k-shot 8 --budget 100 --n-test 200 --price-per-1k-tokens 0.0001 \
    --out "benchmarks/results/compare-minilm-$task"
done
