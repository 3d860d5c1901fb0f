#!/bin/bash
# The attribute study (docs/learning.md, "Attributes"): the demo's fused model with --task both, one run
# per seed, the demo's settings (ksr demo runs them on two processes; this, on one). Run from a folder
# where `ksr demo` made caches/demo. Then: python attributes_folds.py runs/both-seed* (finished folds).
for seed in 123 1 2; do
  ksr train --cache caches/demo --run runs/both-seed$seed --recipe ksr --epochs 28 --select last --seeds $seed \
    --task both --layers 1,1,1 --heads 4 --audio-ffn-dim 64 --text-ffn-dim 64 --max-positions 512 \
    --attention-dropout 0 --device cpu
done
