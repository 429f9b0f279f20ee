#!/usr/bin/env bash
# Every experiment of docs/results/pacs-pretrained, cheapest first so that a stopped run
# leaves whole experiments behind: Table 1 (the paper's four methods), the batch-size
# study (its 128 cell reuses Table 1's runs: same arguments, same job folders, copied),
# the Fig. 4 control, then Table 1's baselines. Resumable: run it again after
#   python -m domainbed.scripts.sweep delete_incomplete ... (or just again: finished jobs
#   are skipped, and a job folder without 'done' is relaunched after delete_incomplete).
# Usage: DATA_DIR=../shared/data/pacs128 bash sweeps/pacs_pretrained_all.sh
set -euo pipefail
here=$(dirname "$0")
source "$here/pacs_pretrained_common.sh"
BASELINES= bash "$here/pacs_pretrained_table1.sh"
batch_out=${OUT_BATCH:-${OUT}_batch_size}
mkdir -p "$batch_out"
python - "$OUT" "$batch_out" "${TARGET:-3}" "${N_TRIALS_BATCH:-3}" <<'PY'
import json, os, shutil, sys
src, dst, target, trials = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for name in sorted(os.listdir(src)):
    results = os.path.join(src, name, "results.jsonl")
    if not (os.path.exists(os.path.join(src, name, "done")) and os.path.exists(results)):
        continue
    with open(results) as f:
        args = json.loads(f.readline())["args"]
    if (args["algorithm"] in ("ERM", "AgrSum") and args["test_envs"] == [target]
            and args["trial_seed"] < trials and not os.path.exists(os.path.join(dst, name))):
        shutil.copytree(os.path.join(src, name), os.path.join(dst, name))
        print(f"batch-size study: reusing Table 1's run {name} ({args['algorithm']}, trial {args['trial_seed']})")
PY
bash "$here/pacs_pretrained_batch_size.sh"
bash "$here/pacs_pretrained_control.sh"
bash "$here/pacs_pretrained_table1.sh"
