#!/usr/bin/env bash
# The paper's Fig. 4 control in the pretrained regime (sweeps/pacs_pretrained_common.sh):
# AgrSum, AgrRand, PCGrad on "multi" (one batch per source domain, Table 1's runs) and
# "single" (N batches of one source domain drawn at random each step) batches.
# Usage: DATA_DIR=../shared/data/pacs128 bash sweeps/pacs_pretrained_control.sh
set -euo pipefail
source "$(dirname "$0")/pacs_pretrained_common.sh"
exec bash "$(dirname "$0")/pacs_control.sh"
