#!/usr/bin/env bash
# The paper's Table 1 / Fig. 3 in the pretrained regime (sweeps/pacs_pretrained_common.sh):
# ERM, AgrSum, AgrRand, PCGrad with N_TRIALS trials (default 6), then BASELINES (default
# IRM GroupDRO Mixup MLDG Fish Fishr UPGrad MGDA CAGrad; empty to skip) with
# N_TRIALS_BASELINES (default 3), IRM's and Fishr's penalty warm-ups scaled to STEPS
# (anneal_hparams in sweeps/pacs_common.sh); the report and the agreement curves of every
# surgery run.
# With the frozen prefix computed by the dataset, Mixup interpolates the prefix's outputs
# instead of the images (a difference stated with the numbers).
# Usage: DATA_DIR=../shared/data/pacs128 bash sweeps/pacs_pretrained_table1.sh
set -euo pipefail
source "$(dirname "$0")/pacs_pretrained_common.sh"
PAPER=${ALGORITHMS:-ERM AgrSum AgrRand PCGrad}
BASELINES=${BASELINES-IRM GroupDRO Mixup MLDG Fish Fishr UPGrad MGDA CAGrad}
launch --algorithms $PAPER --hparams "$HPARAMS"
warmed=() plain=()
for algorithm in $BASELINES; do
    case $algorithm in IRM|Fishr) warmed+=("$algorithm") ;; *) plain+=("$algorithm") ;; esac
done
if [ ${#plain[@]} -gt 0 ]; then
    N_TRIALS=${N_TRIALS_BASELINES:-3} launch --algorithms "${plain[@]}" --hparams "$HPARAMS"
fi
if [ ${#warmed[@]} -gt 0 ]; then
    N_TRIALS=${N_TRIALS_BASELINES:-3} launch --algorithms "${warmed[@]}" \
        --hparams "$(hparams_json "$BATCH_SIZE" "$(anneal_hparams "$STEPS")")"
fi
python -m domainbed_surgery.scripts.report --input_dir "$OUT" --output_dir "$REPORT_DIR/table1" \
    --algorithms $PAPER $BASELINES
python -m domainbed_surgery.scripts.agreement_curves --input_dir "$OUT" --output_dir "$REPORT_DIR/table1"
