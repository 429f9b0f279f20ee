#!/usr/bin/env bash
# CPU-sized PACS: the 64x64 PACS in DomainBed's layout (dataset PACS64, no resize to 224),
# ResNet-18 from scratch (no download), ERM vs AgrSum, AgrRand, PCGrad, leave-one-domain-
# out, 1 trial, 100 steps of 16 images per domain, evaluation every 50 steps.
# About 35 minutes on 2 cores.  Usage: DATA_DIR=../shared/data bash sweeps/pacs64_cpu.sh
set -euo pipefail
OUT=${OUT:-outputs/pacs64_cpu}
export DOMAINBED_PARALLEL_JOBS=${DOMAINBED_PARALLEL_JOBS:-2}
python -m domainbed_surgery.scripts.sweep launch \
    --datasets PACS64 --algorithms ERM AgrSum AgrRand PCGrad \
    --single_test_envs --n_hparams 1 --n_trials 1 --steps 100 --checkpoint_freq 50 \
    --hparams '{"backbone": "resnet18", "pretrained": false, "batch_size": 16}' \
    --data_dir "${DATA_DIR:?set DATA_DIR to the folder holding PACS/}" --output_dir "$OUT" \
    --command_launcher "${LAUNCHER:-parallel}" --skip_confirmation
python -m domainbed_surgery.scripts.report --input_dir "$OUT"
