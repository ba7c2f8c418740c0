#!/usr/bin/env bash
# The imbalanced CIFAR-10 table at its own protocol (issue 35): configs/cifar10_imbalanced/<row>.yaml
# (ResNet-18, 25 epochs of 35,750 images, automobile / deer / frog cut to 250) on the CIFAR-10
# image folder $TFIMB_DATA_DIR, each config unchanged but for the data folder and the precision
# the CPU supports (mixed_precision: auto: mixed_bfloat16 where the CPU has AMX-bf16, else
# float32), with a checkpoint every 70 of an epoch's 280 steps (a row is 3-6 hours and spans
# sessions; the checkpoint frequency changes no arithmetic). Rows are saved, restored, resumed
# and reported exactly as by cifar10_lt_table.sh (its header), under runs/cifar10_imbalanced and
# benchmarks/results/cifar10_imbalanced:
#   TFIMB_DATA_DIR=PATH benchmarks/cifar10_imbalanced_table.sh [--from DIR] [save] ROW...
exec bash "$(dirname "$0")/cifar10_lt_table.sh" --table cifar10_imbalanced --precision auto \
  --set train.checkpoint_every=70 "$@"
