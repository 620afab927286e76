# Two commands: `make demo` (the main job on the embedded digits data) and `make test` (the suite).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_VERSION ?= 2.13.0

.PHONY: install install-test demo test bench data clean ext docs

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, pinned to the CPU build on disk, and only when it is missing:
# an unpinned torch would pull a multi-GB CUDA build.
install: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet torch==$(TORCH_VERSION)
	$(PIP) install --quiet -e .
	@$(MAKE) --no-print-directory ext

# The C++ kernel of the exact conv NPK (npk/kernels/conv_fast.py), for this machine's CPU; best effort:
# without it (no g++) npk uses its pure-torch rules.
CXX ?= g++
EXT := npk/kernels/_conv_npk.so
ext: $(EXT)
$(EXT): csrc/conv_npk.cpp
	@$(CXX) -O3 -fno-tree-loop-distribute-patterns -march=native -pthread -shared -fPIC -o $@ $< || \
	  (rm -f $@; echo "note: the conv NPK extension did not build; npk falls back to its torch rules")

install-test: install
	$(PIP) install --quiet -e ".[dev,ntref,dist]"

# One torch thread: the demo's nets are small, and on a machine whose other core is busy a second
# thread waits for it at every op (DEMO_THREADS=2 on a quiet machine).
DEMO_THREADS ?= 1
demo: install
	$(VENV)/bin/npk demo --force --threads $(DEMO_THREADS)

# Real Fashion-MNIST files for the loader tests (Debian's package); best effort, the tests skip without it.
data:
	@test -d /usr/share/datasets/fashion-mnist || \
	  ( command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) ) || \
	  echo "note: Fashion-MNIST files not installed; loader tests on them will be skipped"

test: install-test data
	$(PY) -m pytest -q tests

# The API reference from the docstrings, with the README and the stored notebooks (not executed), into
# build/docs/index.html; any Sphinx warning fails the build.
docs: install
	$(PIP) install --quiet -e ".[docs]"
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html -c docs . build/docs

bench: install-test
	$(PY) benchmarks/npk_fc.py
	$(PY) benchmarks/conv_npk.py
	$(PY) benchmarks/ntk.py

clean:
	rm -rf $(VENV) build *.egg-info runs $(EXT)
