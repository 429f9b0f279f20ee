#!/usr/bin/env bash
# Experiment 3 of docs/results/pacs64 (the paper's Fig. 4): AgrSum, AgrRand, PCGrad with
# gradients from the N source domains ("multi", the method) and from N batches of one
# source domain drawn at random each step ("single", the control), same protocol and
# sizes as sweeps/pacs_table1.sh (see there). The multi arm is the same jobs as Table 1's:
# with the same OUT they are not run twice. Report: the arms side by side.
# Usage: DATA_DIR=../shared/data bash sweeps/pacs_control.sh
set -euo pipefail
source "$(dirname "$0")/pacs_common.sh"
launch --algorithms AgrSum AgrRand PCGrad --hparams "$HPARAMS"
launch --algorithms AgrSum AgrRand PCGrad --hparams "$(hparams_json "$BATCH_SIZE" '"surgery_batches": "single"')"
python -m domainbed_surgery.scripts.report --input_dir "$OUT" --output_dir "$REPORT_DIR/control" \
    --algorithms AgrSum AgrSum-single AgrRand AgrRand-single PCGrad PCGrad-single --baseline none
