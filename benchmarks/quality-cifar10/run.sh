#!/usr/bin/env bash
# CIFAR-10 quality benchmark, in priority order; every step is resumable (a rerun skips finished
# items). Run from a gaprune checkout with .venv and data/ (CIFAR-10 prepared):
#   nohup benchmarks/quality-cifar10/run.sh > benchmarks/quality-cifar10/logs/run.log 2>&1 &
set -u
OUT=${OUT:-$(cd "$(dirname "$0")" && pwd)}
bench() { TQDM_DISABLE=1 .venv/bin/python scripts/bench_quality.py --protocol cifar10 --out "$OUT" --threads 1 "$@"; }
while pgrep -f "train.py model=resnet20" > /dev/null; do sleep 30; done  # the baseline being trained elsewhere
start=$(date +%s)
bench --models resnet20 --targets 0.7 --seeds 0 --fidelity no
bench --models resnet20 --targets 0.5 --seeds 0 --fidelity no
bench --models resnet20 --fidelity only
bench --models resnet20 --seeds 1 2 --fidelity no
bench --models vgg16 --fidelity no
bench --report
echo "wall_s=$(( $(date +%s) - start ))"
