#!/usr/bin/env bash
# The paper's control experiment (Fig. 4): AgrSum, AgrRand and PCGrad with gradients from
# N source domains ("multi", the method) vs N batches of one source domain drawn at random
# each step ("single"), same samples per update. The report shows each algorithm's arms
# side by side per target domain (columns <name> and <name>-single).
# Default: PACS64 on CPU (ResNet-18 from scratch); set DATASET/HPARAMS for the paper's setup.
# Usage: DATA_DIR=../shared/data bash sweeps/control_single_vs_multi.sh
set -euo pipefail
OUT=${OUT:-outputs/control_single_vs_multi}
DATASET=${DATASET:-PACS64}
BASE=${HPARAMS:-'"backbone": "resnet18", "pretrained": false, "batch_size": 16'}
for arm in multi single; do
    python -m domainbed_surgery.scripts.sweep launch \
        --datasets "$DATASET" --algorithms AgrSum AgrRand PCGrad \
        --single_test_envs --n_hparams 1 --n_trials "${N_TRIALS:-3}" --steps "${STEPS:-100}" \
        --hparams "{$BASE, \"surgery_batches\": \"$arm\"}" \
        --data_dir "${DATA_DIR:?set DATA_DIR}" --output_dir "$OUT" \
        --command_launcher "${LAUNCHER:-parallel}" --skip_confirmation
done
python -m domainbed_surgery.scripts.report --input_dir "$OUT" --baseline none
