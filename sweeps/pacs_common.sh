# Shared by the sweeps/pacs_*.sh presets (sourced): sizes from the environment, defaults
# for the 2-core CPU run of docs/results/pacs64; see sweeps/pacs_table1.sh.
DATASET=${DATASET:-PACS32}
TARGETS=${TARGETS:-2 3}
N_TRIALS=${N_TRIALS:-6}
STEPS=${STEPS:-300}
CHECKPOINT_FREQ=${CHECKPOINT_FREQ:-100}
BATCH_SIZE=${BATCH_SIZE:-16}
EXTRA=${EXTRA:-}
OUT=${OUT:-outputs/pacs}
REPORT_DIR=${REPORT_DIR:-$OUT/report}
export DOMAINBED_PARALLEL_JOBS=${DOMAINBED_PARALLEL_JOBS:-2}
# The fixed hparams of every run (one JSON string: the same string means the same jobs,
# so the presets share runs, e.g. the control's multi-domain arm is Table 1's).
hparams_json() {  # BATCH_SIZE [EXTRA]
    local json="\"batch_size\": $1, \"data_augmentation\": false"
    [ -n "$EXTRA" ] && json="$json, $EXTRA"
    [ -n "${2:-}" ] && json="$json, $2"
    echo "{$json}"
}
HPARAMS=$(hparams_json "$BATCH_SIZE")
# IRM's and Fishr's penalty warm-ups (DomainBed: 500 and 1,500 of its 5,000 steps) scaled to
# STEPS: at DomainBed's values a 300-step run never reaches the full penalty (IRM trains
# with weight 1 instead of irm_lambda, Fishr with weight 0, i.e. ERM's objective).
anneal_hparams() {  # STEPS
    echo "\"irm_penalty_anneal_iters\": $(( (500 * $1 + 2500) / 5000 )), \"penalty_anneal_iters\": $(( (1500 * $1 + 2500) / 5000 ))"
}
launch() {  # extra arguments of the sweep: --algorithms ... --hparams ...
    python -m domainbed_surgery.scripts.sweep launch \
        --datasets "$DATASET" --single_test_envs --test_envs $TARGETS \
        --n_hparams 1 --n_trials "$N_TRIALS" --steps "$STEPS" --checkpoint_freq "$CHECKPOINT_FREQ" \
        --data_dir "${DATA_DIR:?set DATA_DIR to the folder holding PACS/}" --output_dir "$OUT" \
        --command_launcher "${LAUNCHER:-parallel}" --skip_confirmation "$@"
}
