#!/bin/bash
# big corpus text only (ksr-24 vs paper vs official, seed 1, 5 folds); then the patched 'ksr demo' with audio at 230 frames, timed
PY=/work/study/.venv/bin/python
for s in ksr-24 paper official; do $PY study_final.py big $s 1 text; done
sed -i 's/^DEMO_AUDIO_FRAMES = 115/DEMO_AUDIO_FRAMES = 230/' /work/study/cli.py
rm -rf demo_e2e_230 && mkdir demo_e2e_230 && (cd demo_e2e_230 && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 /usr/bin/time -v /work/study/.venv/bin/ksr demo > ksr_demo.out 2> ksr_demo.time)
