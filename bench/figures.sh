#!/usr/bin/env bash
# Re-runs every figure in the README's Benchmarks section; results land in bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=.venv/bin/wshub
mkdir -p bench/results
$BENCH bench compare --runs 3 --json > bench/results/compare.json
$BENCH bench compare --rate 10 --duration 5 --runs 3 --targets wshub,wshub-chat,seed,websockets \
  --json > bench/results/latency-10k.json
$BENCH bench run fanout --runs 3 --json > bench/results/fanout.json
$BENCH bench run slow --runs 3 --json > bench/results/slow.json
for target in wshub wshub-chat bare websockets; do
  $BENCH bench run idle --target "$target" --subscribers 2000 --json > "bench/results/idle-$target.json"
done
for workers in 1 2; do
  $BENCH bench run redis --workers "$workers" --runs 3 --json > "bench/results/redis-x$workers.json"
done
