#!/usr/bin/env bash
# CIFAR-10 quality benchmark in two lanes of one thread each (disjoint items, so both may run at
# once on a 2-core machine); every step is resumable (a rerun skips finished items). Run from a
# gaprune checkout's root with .venv and data/ (CIFAR-10 prepared); the code is benchmarks/quality/:
#   nohup benchmarks/quality-cifar10/run.sh a >> benchmarks/quality-cifar10/logs/lane-a.log 2>&1 &
#   nohup benchmarks/quality-cifar10/run.sh b >> benchmarks/quality-cifar10/logs/lane-b.log 2>&1 &
#   (then lane c, an ablation, when a lane is free; issue #21: lanes d and e, then f)
#   benchmarks/quality-cifar10/run.sh report
# OUT=<dir> writes the items elsewhere (e.g. from a snapshot checkout into the main one).
set -u
OUT=${OUT:-$(cd "$(dirname "$0")" && pwd)}
bench() { TQDM_DISABLE=1 .venv/bin/python -m benchmarks.quality --protocol cifar10 --out "$OUT" --threads 1 "$@"; }
start=$(date +%s)
case "${1:-}" in
  a)  # ResNet-20 at 70 %: every arm, seeds 0-2 (seed by seed)
      bench --models resnet20 --targets 0.7 --seeds 0 1 2 --fidelity no ;;
  b)  # VGG-16 (its baseline is trained here, resumable per epoch) seeds 0-2 and its proxy-fidelity study,
      # ResNet-20's proxy-fidelity study, ResNet-20 at 50 %
      bench --models vgg16
      bench --models resnet20 --fidelity only
      bench --models resnet20 --targets 0.5 --seeds 0 1 2 --fidelity no ;;
  c)  # ablation: NSGA-II keeping its front at the target (the default until optimizer.target_objectives)
      bench --models resnet20 vgg16 --targets 0.7 0.73 --arms front_at_target --fidelity no ;;
  d)  # issue #21, ResNet-20 at 70 %: the cheap search, then the one-shot arms fine-tuned to its compute (seed by seed)
      for seed in 0 1 2; do bench --models resnet20 --targets 0.7 --seeds $seed \
          --arms lean uniform_l1_matched global_l1_matched --fidelity no; done ;;
  e)  # issue #21, ResNet-20 at 70 % with an 8-epoch fine-tune (the cheap search reuses lane d's search)
      for seed in 0 1 2; do bench --models resnet20 --finetune-epochs 8 --seeds $seed \
          --arms uniform_l1 global_l1 lean --fidelity no; done ;;
  f)  # issue #21, VGG-16 at 73 %: the same as lane d
      for seed in 0 1 2; do bench --models vgg16 --seeds $seed --arms lean uniform_l1_matched global_l1_matched \
          --fidelity no; done ;;
  report) bench --report ;;
  *) echo "usage: $0 a|b|c|d|e|f|report" >&2; exit 2 ;;
esac
echo "lane ${1} wall_s=$(( $(date +%s) - start ))"
