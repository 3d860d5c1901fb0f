#!/usr/bin/env bash
# Parity of ksr with fairseq itself (`make fairseq-parity`): the native wav2vec 1.0 port against
# fairseq's Wav2VecModel, and fairseq RoBERTa checkpoints converted for hf: against fairseq's
# RobertaModel hub interface (roberta.encode + extract_features).
#
# fairseq is never a dependency of ksr: it goes into a separate virtual environment,
# .venv-fairseq (override with FAIRSEQ_VENV=...), together with ksr and its extract/test extras,
# and tests/extract/test_extract_wav2vec1.py and test_extract_roberta_fairseq.py run there, where
# their fairseq tests are not skipped.
#
#   tools/fairseq_parity.sh            create or reuse the environment, then run the test
#                                      (extra arguments go to pytest); it prints the measured
#                                      max abs differences ("fairseq parity (large): ...",
#                                      "fairseq RoBERTa parity (...): ...")
#   FAIRSEQ_REBUILD=1 tools/fairseq_parity.sh    start from a fresh environment
#
# Time on a 2-core CPU: about 7.5 minutes the first time on a machine (fairseq-fixed is built
# from source), 3.5 minutes to rebuild with pip's wheel cache, 30 seconds once the environment
# exists.
#
# fairseq-fixed (a packaging of fairseq 0.12 that builds on Python 3.11) is built from source
# (a few minutes, once). It pulls in a torchaudio built for another torch, which breaks
# `import transformers`, so torchaudio is removed afterwards; fairseq's wav2vec and RoBERTa do
# not use it.
# torch stays at the pinned CPU build: requirements/test.txt is the constraint file throughout.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${FAIRSEQ_VENV:-.venv-fairseq}
PY="$VENV/bin/python"
STAMP="$VENV/.ksr-fairseq-installed"

# The pinned test environment (torch 2.13.0 CPU, numpy, transformers, ...) constrains every
# install, so fairseq runs against the same packages as `make test`.
CONSTRAINTS=requirements/test.txt
TORCH_PIN=$(grep -E '^torch==' "$CONSTRAINTS")

if [[ "${FAIRSEQ_REBUILD:-0}" == 1 ]]; then
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
    # Build tools first: fairseq-fixed is built without build isolation against this torch.
    pip install -c "$CONSTRAINTS" "$TORCH_PIN" numpy cython "setuptools<81" wheel
    echo "building fairseq-fixed in $VENV (a few minutes)..."
    pip install -c "$CONSTRAINTS" --no-build-isolation fairseq-fixed
    pip uninstall -y torchaudio || true
    pip install -c "$CONSTRAINTS" --no-build-isolation -e ".[extract,test]"
    touch "$STAMP"
    echo "environment ready in $((SECONDS - start)) s"
fi

"$PY" -c "import fairseq, torch; print('fairseq', fairseq.__version__, '| torch', torch.__version__)"
# fairseq 0.12's own checkpoint reading predates torch's weights_only default; ksr's loader
# never relies on this variable (it passes weights_only=True itself).
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 KSR_REQUIRE_FAIRSEQ=1 \
    "$PY" -P -m pytest -q -s -rs tests/extract/test_extract_wav2vec1.py \
    tests/extract/test_extract_roberta_fairseq.py "$@"
