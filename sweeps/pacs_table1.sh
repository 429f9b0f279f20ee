#!/usr/bin/env bash
# Experiment 2 of docs/results/pacs64 (the paper's Table 1 / Fig. 3 on real data): ERM,
# AgrSum, AgrRand, PCGrad, leave-one-domain-out on PACS, the same fixed hparams for all
# (hparams_seed 0 = DomainBed's PACS defaults + these), N_TRIALS trial seeds per cell,
# then the report (Wilcoxon markers, box plots) with the protocol line under the table.
#
# Default size: the 2-core CPU run of docs/results/pacs64: PACS at 32x32 (dataset PACS32,
# made from ../shared/data/PACS), ResNet-18 from scratch (no ImageNet weights here), 16
# images per domain, no data augmentation (as the authors' code), 300 steps, evaluation
# every 100, targets P and S (the easiest and the hardest), 6 trials: 48 jobs.
# The full version is the same command with other sizes, e.g. on a GPU machine:
#   DATASET=PACS TARGETS="0 1 2 3" N_TRIALS=20 STEPS=1000 CHECKPOINT_FREQ=20 BATCH_SIZE=128 \
#   EXTRA='"backbone": "alexnet", "pretrained": true, "lr": 1e-05, "weight_decay": 5e-05' \
#   DATA_DIR=/data bash sweeps/pacs_table1.sh
# Usage: DATA_DIR=../shared/data bash sweeps/pacs_table1.sh
set -euo pipefail
source "$(dirname "$0")/pacs_common.sh"
launch --algorithms ${ALGORITHMS:-ERM AgrSum AgrRand PCGrad} --hparams "$HPARAMS"
python -m domainbed_surgery.scripts.report --input_dir "$OUT" --output_dir "$REPORT_DIR/table1" \
    --algorithms ${ALGORITHMS:-ERM AgrSum AgrRand PCGrad}
