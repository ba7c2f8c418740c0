#!/usr/bin/env bash
# The CIFAR-10-LT table on this CPU: trains configs/cifar10_lt/<row>.yaml for each row named
# (e.g. `ce_r100 cb_focal_r100`) into runs/cifar10_lt/<row> on the CIFAR-10 image folder
# $TFIMB_DATA_DIR (root/{train,test}/<class>/*.jpg), in float32 (the same kernels on every CPU
# kind, so a run resumed on another machine continues the same arithmetic), resuming
# interrupted runs and skipping finished ones. Each row is about 2.5 million training images:
# hours on 2 cores, over several sessions. A row named <config>_seed<N> (e.g. ce_r100_seed1)
# trains configs/cifar10_lt/<config>.yaml with train.seed=N and data.seed=N (another
# initialisation, order and subset draw: the noise level of a row).
#
# A session's processes end with the session, and only committed files outlive it, so the
# state of an unfinished row travels through git:
#   benchmarks/cifar10_lt_table.sh save ROW...   copies each unfinished run's config.yaml,
#       counts.json, history.csv and newest checkpoint to benchmarks/results/cifar10_lt/<row>/
#       (commit them); a finished run's results.json, history.csv, config.yaml and counts.json
#       replace them there.
#   benchmarks/cifar10_lt_table.sh ROW...        first restores runs/cifar10_lt/<row> from that
#       folder when the run directory is missing, then trains with --resume.
#   benchmarks/cifar10_lt_table.sh --from DIR [save] ROW...   uses DIR instead of
#       benchmarks/results/cifar10_lt, for restoring and saving alike: a row resumes in a
#       worktree of the commit that started it, whose own tree holds an older state (or none),
#       from the state committed since, and saves back there (DIR: main's
#       benchmarks/results/cifar10_lt, where the state is committed).
# Finally `tfimb report` prints the table of the finished rows (plots in runs/cifar10_lt/report).
# A finished row keeps its model.keras beside its results (a model to start from).
#
# `--table NAME --precision P [--set KEY=VALUE]...` (first) runs another folder of configs,
# configs/NAME/, into runs/NAME and benchmarks/results/NAME at mixed_precision P, with the keys
# set (benchmarks/cifar10_imbalanced_table.sh passes cifar10_imbalanced, auto and a checkpoint
# every 70 steps).
set -euo pipefail
table=cifar10_lt precision=float32 extra=()
if [ "${1:-}" = --table ]; then
  [ "${3:-}" = --precision ] && [ -n "${4:-}" ] || { echo "Invalid arguments. Expected" \
    "--table NAME --precision P. Received: $*" >&2; exit 2; }
  table=$2 precision=$4
  shift 4
  while [ "${1:-}" = --set ]; do extra+=(--set "$2"); shift 2; done
fi
kept=  # --from DIR, resolved before the cd below (a relative DIR is the caller's).
if [ "${1:-}" = --from ]; then
  [ -d "${2:-}" ] || { echo "Invalid value for argument \`--from\`. Expected a folder of saved" \
    "rows (benchmarks/results/$table). Received: --from=${2:-}" >&2; exit 2; }
  kept=$(cd "$2" && pwd)
  shift 2
fi
cd "$(dirname "$0")/.."
runs=runs/$table
kept=${kept:-benchmarks/results/$table}  # The saved rows: restored from, saved into.

save() {  # save ROW: the run's resumable state (or its final files) into $kept/ROW.
  local row=$1 dir="$runs/$1" out="$kept/$1"
  [ -f "$dir/config.yaml" ] || { echo "no run in $dir" >&2; return 1; }
  mkdir -p "$out"
  rm -rf "$out/checkpoints"
  cp "$dir/config.yaml" "$dir/counts.json" "$out/"
  [ -f "$dir/history.csv" ] && cp "$dir/history.csv" "$out/"
  if [ -f "$dir/results.json" ]; then
    cp "$dir/results.json" "$out/"
    [ -f "$dir/model.keras" ] && cp "$dir/model.keras" "$out/"
    echo "$row: finished"
    return
  fi
  local newest
  newest=$(ls "$dir/checkpoints" 2>/dev/null | sed -n 's/^ckpt-\([0-9]*\)\.index$/\1/p' \
           | sort -n | tail -1)
  if [ -n "$newest" ]; then
    mkdir -p "$out/checkpoints"
    cp "$dir/checkpoints/ckpt-$newest".* "$out/checkpoints/"
  fi
  echo "$row: saved at $(($(wc -l < "$dir/history.csv" 2>/dev/null || echo 1) - 1)) epochs"
}

restore() {  # restore ROW: an unfinished run from $kept/ROW when runs/ has none.
  local dir="$runs/$1" out="$kept/$1"
  if [ ! -e "$dir" ] && [ -f "$out/config.yaml" ] && [ ! -f "$out/results.json" ]; then
    mkdir -p "$dir"
    cp -r "$out/." "$dir/"
  fi
}

if [ "${1:-}" = save ]; then
  shift
  for row in "$@"; do save "$row"; done
  exit 0
fi

: "${TFIMB_DATA_DIR:?set TFIMB_DATA_DIR to the CIFAR-10 image folder (root/{train,test}/<class>/)}"
for row in "$@"; do
  [ -f "$kept/$row/results.json" ] && { echo "$row: finished (in $kept)"; continue; }
  restore "$row"
  dir="$runs/$row"
  [ -f "$dir/results.json" ] && { save "$row"; continue; }
  resume=()
  [ -f "$dir/config.yaml" ] && resume=(--resume)
  config=$row seed=()
  if [[ ! -f "configs/$table/$row.yaml" && $row =~ ^(.+)_seed(0|[1-9][0-9]*)$ ]]; then
    config=${BASH_REMATCH[1]}
    seed=(--set "train.seed=${BASH_REMATCH[2]}" --set "data.seed=${BASH_REMATCH[2]}")
  fi
  tfimb train "configs/$table/$config.yaml" --workdir "$dir" "${resume[@]}" "${seed[@]}" \
    --set data.source=folder --set "data.dir=$TFIMB_DATA_DIR" --set "mixed_precision=$precision" \
    "${extra[@]}"
  save "$row"
done
finished=($(ls -d "$kept"/*/results.json 2>/dev/null | xargs -r -n1 dirname))
if [ ${#finished[@]} -gt 0 ]; then
  tfimb report "${finished[@]}" --output "$runs/report"
fi
