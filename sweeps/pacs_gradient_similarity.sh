#!/usr/bin/env bash
# Experiment 1 of docs/results/pacs64 (the paper's Fig. 2): intra- vs inter-domain
# per-sample gradient cosine during ERM training on PACS, one class per measurement, for
# every leave-one-domain-out choice. Sizes as sweeps/pacs_table1.sh (DATASET, STEPS,
# BATCH_SIZE, EXTRA), plus EVERY (measure every this many steps) and PER_DOMAIN.
# Usage: DATA_DIR=../shared/data bash sweeps/pacs_gradient_similarity.sh
set -euo pipefail
source "$(dirname "$0")/pacs_common.sh"
python -m domainbed_surgery.scripts.gradient_similarity --dataset "$DATASET" \
    --data_dir "${DATA_DIR:?set DATA_DIR to the folder holding PACS/}" \
    --steps "$STEPS" --every "${EVERY:-30}" --per_domain "${PER_DOMAIN:-8}" \
    --hparams "$HPARAMS" --output_dir "$REPORT_DIR/gradient_similarity"
