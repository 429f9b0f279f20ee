#!/usr/bin/env bash
# The full-size pretrained protocol, for GPUs (docs/results/pacs-pretrained/gpu_pilot):
# DomainBed's own PACS dataset (224x224), EfficientNet-Lite0 with ImageNet weights, full
# fine-tuning (no frozen prefix), 128 images per domain, no augmentation, DomainBed's PACS
# hparams otherwise (Adam, lr 5e-5, no weight decay), 1,000 steps (the authors'),
# validation every 100; ERM, AgrSum, AgrRand, PCGrad on all four targets, 10 trials; two
# jobs share each GPU (DOMAINBED_PARALLEL_PER_GPU; one job uses under a third of an H200).
# Usage: DATA_DIR=/path/holding/PACS bash sweeps/pacs_pretrained_gpu.sh
#   the committed pilot: TARGETS=3 N_TRIALS=1 ALGORITHMS="ERM AgrSum" (8 minutes on one H200)
#   (LAUNCHER=slurm for a cluster: see domainbed_surgery/launch/launchers.py)
set -euo pipefail
export DATASET=PACS TARGETS=${TARGETS:-0 1 2 3} N_TRIALS=${N_TRIALS:-10} STEPS=${STEPS:-1000}
export CHECKPOINT_FREQ=${CHECKPOINT_FREQ:-100} OUT=${OUT:-outputs/pacs_pretrained_gpu}
export DOMAINBED_PARALLEL_PER_GPU=${DOMAINBED_PARALLEL_PER_GPU:-2}
source "$(dirname "$0")/pacs_common.sh"
ALGORITHMS=${ALGORITHMS:-ERM AgrSum AgrRand PCGrad}
launch --algorithms $ALGORITHMS \
    --hparams '{"backbone": "efficientnet_lite0", "pretrained": true, "batch_size": 128, "data_augmentation": false}'
python -m domainbed_surgery.scripts.report --input_dir "$OUT" --output_dir "$REPORT_DIR" --algorithms $ALGORITHMS
python -m domainbed_surgery.scripts.agreement_curves --input_dir "$OUT" --output_dir "$REPORT_DIR"
