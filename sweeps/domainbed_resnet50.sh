#!/usr/bin/env bash
# DomainBed's standard protocol (Gulrajani & Lopez-Paz, 2021) with our three algorithms
# beside ERM, IRM, MLDG, Mixup, GroupDRO, Fish and Fishr: random hparam search (20 draws),
# 3 trials, all one- and two-test-env combinations (needed by leave-one-domain-out model
# selection), ResNet-50 (torchvision, ImageNet weights) for every algorithm.
# Fishr is domainbed_surgery's BackPACK-free Fishr (see domainbed_surgery/fixes/fishr.py).
#
# Usage: DATA_DIR=/path/to/domainbed/data bash sweeps/domainbed_resnet50.sh
set -euo pipefail
OUT=${OUT:-outputs/domainbed_resnet50}
python -m domainbed_surgery.scripts.sweep launch \
    --datasets PACS VLCS OfficeHome TerraIncognita \
    --algorithms ERM AgrSum AgrRand PCGrad IRM MLDG Mixup GroupDRO Fish Fishr \
    --n_hparams 20 --n_trials 3 \
    --hparams '{"backbone": "resnet50"}' \
    --data_dir "${DATA_DIR:?set DATA_DIR to the DomainBed data folder}" --output_dir "$OUT" \
    --command_launcher "${LAUNCHER:-parallel}" --skip_confirmation
python -m domainbed.scripts.collect_results --input_dir "$OUT"
python -m domainbed_surgery.scripts.report --input_dir "$OUT" --selection iid loo oracle
