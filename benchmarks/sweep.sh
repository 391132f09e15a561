#!/usr/bin/env bash
# The sweep that chose `kronfac train`'s default hyperparameters (benchmarks/README.md, "Default
# hyperparameters"): short runs around the starting points of DESIGN.md section 9, one optimizer
# setting per run, on Fashion-MNIST (the FOOF paper's Fig. 1A classifier) and on curves (the deep
# autoencoder). Each run logs only its first and last step; the score is the training loss after
# the last step on 5000 fixed training examples (the same examples for every run).
#
#   benchmarks/sweep.sh [fashion|curves|all]     (default: all; about 25 minutes on two cores)
#
# Results: build/sweep/<set>/<run>.csv and .txt, and build/sweep/summary.txt (one line per run:
# set, optimizer, settings, final training loss, seconds per step).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
which=${1:-all}
# OpenBLAS 0.3.21 falls back to its Prescott kernels on CPUs newer than it knows (see scripts/demo).
if [ -z "${OPENBLAS_CORETYPE:-}" ] && [ -r /proc/cpuinfo ]; then
    flags=$(grep -m1 '^flags' /proc/cpuinfo)
    has() { for f in "$@"; do [[ " $flags " == *" $f "* ]] || return 1; done; }
    if has avx512f avx512cd avx512bw avx512dq avx512vl; then
        export OPENBLAS_CORETYPE=SkylakeX
    elif has avx2 fma; then
        export OPENBLAS_CORETYPE=Haswell
    fi
fi
bin=${KRONFAC_BIN:-}
if [ -z "$bin" ]; then
    export PATH=/opt/swift/usr/bin:$PATH
    swift build -c release -j 2 --product kronfac >/dev/null
    bin="$root/.build/release/kronfac"
fi
out=${KRONFAC_SWEEP_DIR:-$root/build/sweep}
mkdir -p "$out"
summary="$out/summary.txt"

# run SET NAME STEPS ARGS...: one kronfac train run; appends its score to the summary.
run() {
    local set=$1 name=$2 steps=$3; shift 3
    mkdir -p "$out/$set"
    if ! "$bin" train "$@" --steps "$steps" --log-every "$steps" --eval-examples 5000 --seed 1 \
            --log "$out/$set/$name.csv" >"$out/$set/$name.txt" 2>&1; then
        echo "$set $name FAILED (see $out/$set/$name.txt)" | tee -a "$summary"
        return 0
    fi
    # The last row of the log: optimizer,step,seconds,train_loss,...
    local last loss seconds
    last=$(tail -n 1 "$out/$set/$name.csv")
    loss=$(echo "$last" | cut -d, -f4)
    seconds=$(echo "$last" | cut -d, -f3)
    if grep -q "diverged" "$out/$set/$name.txt"; then loss="diverged($loss)"; fi
    printf '%-8s %-28s train_loss %-14s s/step %.4f\n' "$set" "$name" "$loss" \
        "$(echo "$seconds / $steps" | bc -l)" | tee -a "$summary"
}

if [ "$which" = fashion ] || [ "$which" = all ]; then
    f=(--data fashion-mnist --task classify --batch-size 100)
    s=400
    for lr in 0.1 0.3 1; do
        for d in 0.1 0.3 1; do
            run fashion "foof-lr$lr-d$d" $s "${f[@]}" --optimizers foof --lr $lr --damping $d
        done
    done
    for lr in 0.03 0.1 0.3; do
        for d in 0.03 0.1 0.3; do
            run fashion "kfac-lr$lr-d$d" $s "${f[@]}" --optimizers kfac --lr $lr --damping $d
        done
    done
    for lr in 1e-4 3e-4 1e-3 3e-3; do
        run fashion "adam-lr$lr" $s "${f[@]}" --optimizers adam --lr $lr
    done
    for lr in 0.01 0.03 0.1; do
        run fashion "sgd-lr$lr-m0.9" $s "${f[@]}" --optimizers sgd --lr $lr --momentum 0.9
    done
    # Refinement below the grid's smallest damping, where FOOF and K-FAC were best.
    for ld in "0.3 0.03" "0.1 0.03"; do
        set -- $ld
        run fashion "foof-lr$1-d$2" $s "${f[@]}" --optimizers foof --lr $1 --damping $2
    done
    for ld in "0.01 0.01" "0.03 0.01"; do
        set -- $ld
        run fashion "kfac-lr$1-d$2" $s "${f[@]}" --optimizers kfac --lr $1 --damping $2
    done
    # Inverse interval T and statistics subsampling S at the starting points.
    for ts in "20 0" "100 0" "100 10"; do
        set -- $ts
        run fashion "foof-T$1-S$2" $s "${f[@]}" --optimizers foof --inverse-interval $1 --stats-subsample $2
        run fashion "kfac-T$1-S$2" $s "${f[@]}" --optimizers kfac --inverse-interval $1 --stats-subsample $2
    done
fi

if [ "$which" = curves ] || [ "$which" = all ]; then
    c=(--data curves --task autoencoder --batch-size 500)
    s=200
    for ld in "0.1 3" "0.3 3" "0.03 3" "0.1 1" "0.1 10"; do
        set -- $ld
        run curves "foof-lr$1-d$2-m0.5" $s "${c[@]}" --optimizers foof --lr $1 --damping $2 --momentum 0.5
    done
    for ld in "0.01 0.3" "0.03 0.3" "0.003 0.3" "0.01 0.1" "0.01 1"; do
        set -- $ld
        run curves "kfac-lr$1-d$2-m0.5" $s "${c[@]}" --optimizers kfac --lr $1 --damping $2 --momentum 0.5
    done
    # Refinement beyond the largest damping, where both were best.
    run curves "foof-lr0.3-d30-m0.5" $s "${c[@]}" --optimizers foof --lr 0.3 --damping 30 --momentum 0.5
    run curves "kfac-lr0.03-d3-m0.5" $s "${c[@]}" --optimizers kfac --lr 0.03 --damping 3 --momentum 0.5
    for lr in 1e-3 3e-3 1e-2; do
        run curves "adam-lr$lr" $s "${c[@]}" --optimizers adam --lr $lr
    done
    for lr in 0.01 0.03 0.1; do
        run curves "sgd-lr$lr-m0.5" $s "${c[@]}" --optimizers sgd --lr $lr --momentum 0.5
    done
fi
echo "summary: $summary"
