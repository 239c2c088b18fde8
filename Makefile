# metaopt: every target installs what it needs into .venv first (Python 3.11 + pip suffice).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Data sets: the original files in ../shared/data when present, else tensorflow-datasets downloads.
METAOPT_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export METAOPT_DATA_DIR
# QUICK=1 runs reduced experiments that write to results/quick/ (git-ignored);
# RESUME=1 continues an interrupted meta-training from its newest checkpoint (.cache/checkpoints/).
export QUICK RESUME

.PHONY: install test quadratic mnist cifar art generalize generalize-ablation bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=10 tests

quadratic: $(STAMP)
	$(PY) -m experiments.quadratic

mnist: $(STAMP)
	$(PY) -m experiments.mnist

cifar: $(STAMP)
	$(PY) -m experiments.cifar

art: $(STAMP)
	$(PY) -m experiments.art

generalize: $(STAMP)
	$(PY) -m experiments.generalize

generalize-ablation: $(STAMP)
	$(PY) -m experiments.generalize_ablation

bench: $(STAMP)
	$(PY) -m experiments.bench

clean:
	rm -rf $(VENV) results/quick .pytest_cache
