#!/bin/bash
# after queue_final.sh: the patched 'ksr demo' end to end in a fresh folder (timed); paper fused fold 1;
# big corpus text only (ksr-24 vs paper vs official); SGD step-size sweep (text); make demo as is x 3 seeds
PY=/work/study/.venv/bin/python
while kill -0 16727 2>/dev/null; do sleep 5; done
rm -rf demo_e2e && mkdir demo_e2e && (cd demo_e2e && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 /usr/bin/time -v /work/study/.venv/bin/ksr demo > ksr_demo.out 2> ksr_demo.time)
RECIPES=paper $PY study_paper.py both 1
for s in ksr-24 paper official; do $PY study_final.py big $s 1 text; done
$PY study_sgd.py
for seed in 1 2 3; do $PY study_final.py demo demo $seed both,text; done
