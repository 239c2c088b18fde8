# metaopt: every target installs what it needs into .venv first (Python 3.11 + pip suffice).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Data sets: the original files in ../shared/data when present, else tensorflow-datasets downloads.
METAOPT_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export METAOPT_DATA_DIR
# QUICK=1 runs reduced experiments that write to results/quick/ (git-ignored);
# RESUME=1 continues an interrupted meta-training from its newest checkpoint (.cache/checkpoints/);
# RULES=a,b runs only those extra rules of an experiment (with its main rule).
export QUICK RESUME RULES
# XLA:CPU allocates fresh buffers on every call. The C library's malloc hands large freed
# buffers back to the kernel and every call faults their pages in again (docs/performance.md).
# Experiments and the bench run with malloc tunables that keep the heaps (two arenas, no
# trimming), map only buffers of 32 MiB and more, and back both with transparent huge pages:
# about 11% behind tcmalloc's speed (make bench-malloc) with no extra package.
# tcmalloc is preloaded instead when it is installed
# (apt-get install libtcmalloc-minimal4); MALLOC_LIB= turns that off, MALLOC_TUNABLES= the tunables.
MALLOC_TUNABLES ?= glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=68719476736:glibc.malloc.top_pad=268435456:glibc.malloc.hugetlb=1
MALLOC_LIB ?= $(firstword $(wildcard /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4))
RUN := $(if $(MALLOC_TUNABLES),GLIBC_TUNABLES=$(MALLOC_TUNABLES) )$(if $(MALLOC_LIB),LD_PRELOAD=$(MALLOC_LIB) TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD=1099511627776 )$(PY)

.PHONY: install test lint docs quadratic mnist mnist-long cifar art generalize generalize-ablation suite bench bench-malloc profile clean

# constraints.txt pins every dependency to the versions the results were produced with.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=10 tests

# ruff, configured in pyproject.toml ([tool.ruff]).
lint: $(STAMP)
	$(PY) -m ruff check .

# Regenerates the tables in README.md and docs/ from results/*/summary.json and bench.json.
docs: $(STAMP)
	$(PY) -m experiments.report

quadratic: $(STAMP)
	$(RUN) -m experiments.quadratic

mnist: $(STAMP)
	$(RUN) -m experiments.mnist

mnist-long: $(STAMP)
	$(RUN) -m experiments.mnist_long

cifar: $(STAMP)
	$(RUN) -m experiments.cifar

art: $(STAMP)
	$(RUN) -m experiments.art

generalize: $(STAMP)
	$(RUN) -m experiments.generalize

generalize-ablation: $(STAMP)
	$(RUN) -m experiments.generalize_ablation

suite: $(STAMP)
	$(RUN) -m experiments.suite

bench: $(STAMP)
	$(RUN) -m experiments.bench

# Where the MNIST meta-step's time goes, per kind of XLA op: results/bench/profile.json.
profile: $(STAMP)
	$(RUN) -m experiments.profile_meta_step

# The MNIST meta-step under system malloc, MALLOC_TUNABLES and tcmalloc, alternating processes.
bench-malloc: $(STAMP)
	$(PY) -m experiments.bench_malloc

clean:
	rm -rf $(VENV) results/quick .pytest_cache
