#!/usr/bin/env bash
# Does the per-domain batch size change what gradient surgery sees? ERM and AgrSum on one
# target (TARGET, default 3 = sketch) with BATCH_SIZES images per domain (default 16 64
# 128), N_TRIALS_BATCH trials each (default 2), otherwise the protocol of
# sweeps/pacs_table1.sh, in a folder of its own (OUT_BATCH: runs that differ only in
# batch_size share hparams_seed 0, and DomainBed's selection would pool them with Table 1's).
# Then agreement, cosine and the accuracy gap to ERM per batch size (scripts.compare_by_hparam).
# Usage: DATA_DIR=../shared/data bash sweeps/pacs_batch_size.sh
set -euo pipefail
source "$(dirname "$0")/pacs_common.sh"
TARGETS=${TARGET:-3}
OUT=${OUT_BATCH:-${OUT}_batch_size}
N_TRIALS=${N_TRIALS_BATCH:-2}
for batch in ${BATCH_SIZES:-16 64 128}; do
    launch --algorithms ERM AgrSum --hparams "$(hparams_json "$batch")"
done
python -m domainbed_surgery.scripts.compare_by_hparam --input_dir "$OUT" --hparam batch_size \
    --test_env "$TARGETS" --algorithms ERM AgrSum --output_dir "$REPORT_DIR/batch_size"
