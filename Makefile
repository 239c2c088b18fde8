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
# Experiments and the bench preload tcmalloc, which keeps them: the system's when installed
# (apt-get install libtcmalloc-minimal4), else Debian's package fetched once, without root,
# into .cache/malloc (apt-get download + dpkg-deb -x). Where neither is possible they run with
# malloc tunables that keep the heaps (two arenas, no trimming), map only buffers of 32 MiB and
# more, and back both with transparent huge pages: level with tcmalloc on an AVX2 CPU, 11%
# behind on an AVX-512 one (make bench-malloc, docs/performance.md).
# MALLOC_LIB= turns tcmalloc off, MALLOC_TUNABLES= the tunables.
MALLOC_DIR := .cache/malloc
MALLOC_FETCHED := $(MALLOC_DIR)/.fetched
SYSTEM_TCMALLOC = $(firstword $(wildcard /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4))
MALLOC_TUNABLES ?= glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=68719476736:glibc.malloc.top_pad=268435456:glibc.malloc.hugetlb=1
MALLOC_LIB ?= $(firstword $(SYSTEM_TCMALLOC) $(wildcard $(MALLOC_DIR)/usr/lib/*/libtcmalloc_minimal.so.4))
# Expanded when a recipe runs, after $(MALLOC_FETCHED) is made.
RUN = $(if $(MALLOC_LIB),LD_PRELOAD=$(abspath $(MALLOC_LIB)) TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD=1099511627776 ,$(if $(MALLOC_TUNABLES),GLIBC_TUNABLES=$(MALLOC_TUNABLES) ))$(PY)
DEPS := $(STAMP) $(MALLOC_FETCHED)

.PHONY: install test lint docs quadratic mnist mnist-long cifar art generalize generalize-ablation suite bench bench-malloc profile clean

# constraints.txt pins every dependency to the versions the results were produced with.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# tcmalloc for the experiments and the bench when the system has none (see above); a failed
# download only prints a note.
$(MALLOC_FETCHED):
	mkdir -p $(MALLOC_DIR)
	@if [ -z "$(SYSTEM_TCMALLOC)" ]; then \
	  ( cd $(MALLOC_DIR) && rm -f *.deb && apt-get download -q libtcmalloc-minimal4 >/dev/null 2>&1 \
	    && dpkg-deb -x libtcmalloc-minimal4_*.deb . && rm -f *.deb ) \
	  || echo "note: could not fetch libtcmalloc-minimal4; running with MALLOC_TUNABLES instead"; \
	fi
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=10 tests

# ruff, configured in pyproject.toml ([tool.ruff]).
lint: $(STAMP)
	$(PY) -m ruff check .

# Regenerates the tables in README.md and docs/ from results/*/summary.json and bench.json.
docs: $(STAMP)
	$(PY) -m experiments.report

quadratic: $(DEPS)
	$(RUN) -m experiments.quadratic

mnist: $(DEPS)
	$(RUN) -m experiments.mnist

mnist-long: $(DEPS)
	$(RUN) -m experiments.mnist_long

cifar: $(DEPS)
	$(RUN) -m experiments.cifar

art: $(DEPS)
	$(RUN) -m experiments.art

generalize: $(DEPS)
	$(RUN) -m experiments.generalize

generalize-ablation: $(DEPS)
	$(RUN) -m experiments.generalize_ablation

suite: $(DEPS)
	$(RUN) -m experiments.suite

bench: $(DEPS)
	$(RUN) -m experiments.bench

# Where the MNIST meta-step's time goes, per kind of XLA op: results/bench/profile.json.
profile: $(DEPS)
	$(RUN) -m experiments.profile_meta_step

# The MNIST meta-step under system malloc, MALLOC_TUNABLES and tcmalloc, alternating processes.
bench-malloc: $(DEPS)
	$(PY) -m experiments.bench_malloc

clean:
	rm -rf $(VENV) results/quick .pytest_cache
