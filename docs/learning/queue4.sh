#!/bin/bash
# after the running big/paper text run: the patched 'ksr demo' at 230 frames (timed), then big/official text
PY=/work/study/.venv/bin/python
while kill -0 29390 2>/dev/null; do sleep 3; done
sed -i 's/^DEMO_AUDIO_FRAMES = 115/DEMO_AUDIO_FRAMES = 230/' /work/study/cli.py
rm -rf demo_e2e_230 && mkdir demo_e2e_230 && (cd demo_e2e_230 && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 /usr/bin/time -v /work/study/.venv/bin/ksr demo > ksr_demo.out 2> ksr_demo.time)
$PY study_final.py big official 1 text
