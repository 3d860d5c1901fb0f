#!/bin/sh
# The imbalance study (docs/learning.md, "Imbalanced classes"): the 8:4:2:1 demo variant, five ways to
# train, 3 seeds each, each run with its linear probe (and the class-weighted probe) beside it.
# Usage: sh docs/learning/study_imbalance.sh WORK   (from the repository root; WORK: a scratch folder)
set -e
WORK=${1:?usage: study_imbalance.sh WORK}
export OMP_NUM_THREADS=1
[ -f "$WORK/demo64/manifest.csv" ] || ksr prepare demo "$WORK/demo64" --per-speaker 64
[ -f "$WORK/demo64/imbalanced.csv" ] || python tools/imbalanced_demo.py "$WORK/demo64/manifest.csv" "$WORK/demo64/imbalanced.csv"
# audio cut at 100 frames (make demo: 230) and 16 epochs (the ksr recipe: 24): the shared CPU's time
ksr extract "$WORK/demo64/imbalanced.csv" -o "$WORK/caches/demo-imb100" --audio-encoder tiny-audio --text-encoder tiny-text \
    --max-audio-len 100 --corpus demo-imbalanced --device cpu --no-progress
# make demo's model and the ksr recipe; the last epoch kept; the probes choose C on validation macro-F1
COMMON="--cache $WORK/caches/demo-imb100 --protocol split --recipe ksr --epochs 16 --select last --metric macro_f1
    --layers 1,1,1 --heads 4 --audio-ffn-dim 64 --text-ffn-dim 64 --max-positions 512 --attention-dropout 0 --device cpu"
# seed by seed, so that an interrupted study has every variant at the same seeds (--resume continues)
for seed in 1 2 3; do
    for variant in plain weighted focal balanced weighted-focal; do
        case $variant in
            plain) extra="" ;;
            weighted) extra="--loss weighted-ce" ;;
            focal) extra="--loss focal --focal-gamma 2" ;;
            balanced) extra="--sampler balanced" ;;
            weighted-focal) extra="--loss weighted-focal --focal-gamma 2" ;;
        esac
        nice -n 10 ksr train $COMMON --seeds $seed $extra --run "$WORK/runs/imb-$variant" --resume
    done
done
