#!/bin/bash
# the final demo-cache tables, one seed at a time so that each finished seed is logged (log_final.jsonl)
PY=/work/study/.venv/bin/python
for seed in 1 2 3; do
  $PY study_final.py demo ksr-24 $seed both
  $PY study_final.py demo ksr-24 $seed text
  $PY study_final.py demo ksr-24 $seed audio
done
