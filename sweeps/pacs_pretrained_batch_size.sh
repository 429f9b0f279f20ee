#!/usr/bin/env bash
# The batch-size study in the pretrained regime (sweeps/pacs_pretrained_common.sh): ERM and
# AgrSum on TARGET (default 3 = sketch) with BATCH_SIZES (default 16 32 64 128) images per
# domain, N_TRIALS_BATCH (default 3) trials each, in a folder of its own; then agreement,
# cosine and the gap to ERM per batch size, with the per-trial CSV.
# Usage: DATA_DIR=../shared/data/pacs128 bash sweeps/pacs_pretrained_batch_size.sh
set -euo pipefail
source "$(dirname "$0")/pacs_pretrained_common.sh"
export BATCH_SIZES=${BATCH_SIZES:-16 32 64 128} N_TRIALS_BATCH=${N_TRIALS_BATCH:-3}
exec bash "$(dirname "$0")/pacs_batch_size.sh"
