#!/usr/bin/env bash
# Main job (the CPU preset): a small sweep on the offline RotatedDigits dataset -- ERM
# (Deep-All), AgrSum, AgrRand, PCGrad, IRM, MLDG, Mixup, GroupDRO; leave-one-domain-out over
# its 4 domains, default hparams, 1 trial, 150 steps of 16 images per domain -- through
# DomainBed's own sweep (2 jobs at a time, 1 thread each), then DomainBed's collect_results
# table and our paper-style report (tables + box plots).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
export PATH="$PWD/.venv/bin:$PATH"   # DomainBed's sweep starts each job as 'python -m ...'
OUT=${OUT:-outputs/demo_rotated_digits}
mkdir -p "$(dirname "$OUT")"
export DOMAINBED_PARALLEL_JOBS=${DOMAINBED_PARALLEL_JOBS:-2}
# the launcher's progress bar on the terminal; the sweep's own output in the log
export DOMAINBED_PARALLEL_PROGRESS=${DOMAINBED_PARALLEL_PROGRESS:-tty}
echo "Sweep of 32 jobs (5-10 min on 2 cores); its output goes to $OUT.launch.log"
python -m domainbed.scripts.sweep launch \
    --datasets RotatedDigits \
    --algorithms ERM AgrSum AgrRand PCGrad IRM MLDG Mixup GroupDRO \
    --n_hparams 1 --n_trials 1 --single_test_envs --steps 150 \
    --hparams '{"batch_size": 16}' \
    --data_dir outputs/data --output_dir "$OUT" \
    --command_launcher parallel --skip_confirmation > "$OUT.launch.log" 2>&1 \
    || { tail -n 30 "$OUT.launch.log"; exit 1; }
tail -n 3 "$OUT.launch.log"
python -m domainbed.scripts.collect_results --input_dir "$OUT" > /dev/null 2>&1
awk '/leave-one-domain-out/{exit} {print}' "$OUT/results.txt"   # the first selection method
echo "DomainBed's tables for all selection methods: $OUT/results.txt"
python -m domainbed_surgery.scripts.report --input_dir "$OUT" --output_dir "$OUT/report"
