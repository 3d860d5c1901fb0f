#!/usr/bin/env bash
# Parity of ksr's native emotion2vec (`e2v:`) with FunASR's own Emotion2vec (`make funasr-parity`).
#
# FunASR is never a dependency of ksr: it goes into a separate virtual environment,
# .venv-funasr (override with FUNASR_VENV=...), together with ksr and its extract/test extras,
# and tests/extract/test_extract_emotion2vec.py runs there, where its FunASR tests are not skipped:
# FunASR's Emotion2vec is built from base- and large-size configs with random weights, saved as
# a released checkpoint folder is (model.pt + config.yaml), loaded by ksr, and both models'
# frame features are compared (<= 1e-5 max abs); the figures are printed
# ("funasr parity (base): max abs ...").
#
#   tools/funasr_parity.sh             create or reuse the environment, then run the test
#                                      (extra arguments go to pytest)
#   FUNASR_REBUILD=1 tools/funasr_parity.sh    start from a fresh environment
#
# torch stays at the pinned CPU build: requirements/test.txt constrains every install, so FunASR
# runs against the same packages as `make test`.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${FUNASR_VENV:-.venv-funasr}
PY="$VENV/bin/python"
STAMP="$VENV/.ksr-funasr-installed"
CONSTRAINTS=requirements/test.txt
TORCH_PIN=$(grep -E '^torch==' "$CONSTRAINTS")

if [[ "${FUNASR_REBUILD:-0}" == 1 ]]; then
    rm -rf "$VENV"
fi

if [[ ! -f "$STAMP" ]]; then
    start=$SECONDS
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # pip, minus this machine's notes about absent local indexes; pip's status is kept.
    pip() {
        { "$PY" -m pip --quiet "$@" 2>&1; } | { grep -v "is ignored: it is neither" || true; }
    }
    pip install -c "$CONSTRAINTS" "$TORCH_PIN" numpy "setuptools<81" wheel
    echo "installing FunASR into $VENV (a few minutes)..."
    pip install -c "$CONSTRAINTS" funasr
    pip install -c "$CONSTRAINTS" --no-build-isolation -e ".[extract,test]"
    touch "$STAMP"
    echo "environment ready in $((SECONDS - start)) s"
fi

"$PY" -c "import funasr, torch; print('funasr', funasr.__version__, '| torch', torch.__version__)"
KSR_REQUIRE_FUNASR=1 "$PY" -P -m pytest -q -s -rs tests/extract/test_extract_emotion2vec.py "$@"
