# ksr: the commands users type. Every target creates or reuses .venv in the repository.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ksr-installed

# Stage settings: make train DATA=iemocap RECIPE=official TRAIN_ARGS="--fold 5"
# Which recipe (docs/corpora.md, "Which recipe"): paper / official reproduce the public code on
# IEMOCAP with a GPU; a corpus of hundreds to a few thousand utterances, or a CPU, trains with
# RECIPE=ksr SIZE=small (the ksr recipe scales its learning rate to the model's size).
DATA       ?= iemocap
CACHE      ?= caches/$(DATA)
RUN        ?= runs/$(DATA)
RECIPE     ?= paper
TRAIN_ARGS ?=
SIZE       ?=

# Extraction: make extract DATA=iemocap IEMOCAP=/path/to/IEMOCAP_full_release | make extract DATA=demo
# (any other DATA=name extracts data/name/manifest.csv). Encoders default to the paper's pair
# (paper-audio reads the wav2vec_large.pt path from $$KSR_WAV2VEC_LARGE); the demo's are tiny.
IEMOCAP      ?=
EXTRACT_ARGS ?=
ifeq ($(DATA),demo)
AUDIO_ENCODER ?= tiny-audio
TEXT_ENCODER  ?= tiny-text
else
AUDIO_ENCODER ?= paper-audio
TEXT_ENCODER  ?= paper-text
endif

.PHONY: help venv test lint format demo bench clean train extract fairseq-parity funasr-parity

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# Reinstall when the pinned requirements or the package metadata change.
$(STAMP): requirements/test.txt setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements/test.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)  ## create or update .venv with ksr and the pinned test environment

# Two workers, a test file each at a time (--dist loadfile keeps a file's module fixtures in one process).
test: $(STAMP)  ## run the test suite (what CI runs)
	$(PY) -P -m pytest -q -n 2 --dist loadfile tests

lint: $(STAMP)  ## ruff: lint and check the formatting (what CI runs)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)  ## ruff: fix what can be fixed and reformat
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: $(STAMP)  ## run ksr on the built-in demo
	$(VENV)/bin/ksr demo

extract: $(STAMP)  ## prepare + extract DATA=iemocap (IEMOCAP=path) or DATA=demo into caches/$(DATA)
ifeq ($(DATA),iemocap)
	@test -n "$(IEMOCAP)" || { echo "make extract DATA=iemocap: set IEMOCAP=/path/to/IEMOCAP_full_release" >&2; exit 2; }
	$(VENV)/bin/ksr prepare iemocap "$(IEMOCAP)" --out data/iemocap/manifest.csv --force
else ifeq ($(DATA),demo)
	$(VENV)/bin/ksr prepare demo data/demo
else
	@test -f data/$(DATA)/manifest.csv || { echo "make extract DATA=$(DATA): write data/$(DATA)/manifest.csv first (docs/manifest.md)" >&2; exit 2; }
endif
	$(VENV)/bin/ksr extract data/$(DATA)/manifest.csv --out $(CACHE) --audio-encoder $(AUDIO_ENCODER) --text-encoder $(TEXT_ENCODER) $(EXTRACT_ARGS)

train: $(STAMP)  ## train all folds on caches/$(DATA) into runs/$(DATA) (RECIPE=paper|official|ksr, SIZE=small|default, TRAIN_ARGS=...)
	$(VENV)/bin/ksr train --cache $(CACHE) --run $(RUN) --recipe $(RECIPE) $(if $(SIZE),--size $(SIZE)) $(TRAIN_ARGS)

fairseq-parity:  ## check the native wav2vec 1.0 port against fairseq itself (own venv .venv-fairseq, minutes)
	bash tools/fairseq_parity.sh

funasr-parity:  ## check the native emotion2vec against FunASR itself (own venv .venv-funasr, minutes)
	bash tools/funasr_parity.sh

bench: $(STAMP)  ## time the hot paths; results go to bench/results.md
	$(PY) bench/run.py --out bench/results.md

clean:  ## remove the virtual environment and build leftovers
	rm -rf $(VENV) build *.egg-info .pytest_cache
