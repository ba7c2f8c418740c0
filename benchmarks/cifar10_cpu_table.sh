#!/usr/bin/env bash
# Runs configs/cifar10_imbalanced_cpu/*.yaml one after another (or the names given as
# arguments, e.g. `imbalanced_ce cb_softmax_b0.999`) into runs/cifar10_imbalanced_cpu/<name>,
# resuming interrupted runs and skipping finished ones, then prints the table of every finished
# run with `tfimb report` (plots in runs/cifar10_imbalanced_cpu/report). Run from the repository
# root with TFIMB_DATA_DIR naming a CIFAR-10 image folder (root/{train,test}/<class>/*.jpg).
# 7-13 minutes per config on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/cifar10_imbalanced_cpu
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=($(ls configs/cifar10_imbalanced_cpu | sed 's/\.yaml$//'))
fi
for name in "${names[@]}"; do
  dir="$out/$name"
  if [ -f "$dir/results.json" ]; then continue; fi
  resume=()
  if [ -f "$dir/config.yaml" ]; then resume=(--resume); fi
  tfimb train "configs/cifar10_imbalanced_cpu/$name.yaml" --workdir "$dir" "${resume[@]}"
done
finished=($(ls -d "$out"/*/results.json 2>/dev/null | xargs -r -n1 dirname))
tfimb report "${finished[@]}" --output "$out/report"
