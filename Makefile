# Two commands: `make demo` (the main job on the embedded digits data) and `make test` (the suite).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_VERSION ?= 2.13.0

.PHONY: torch install install-test demo test test-quick bench data clean ext docs

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, pinned to the CPU build on disk, and only when it is missing:
# an unpinned torch would pull a multi-GB CUDA build.
torch: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet torch==$(TORCH_VERSION)

# The package build compiles the C++ conv NPK kernel (setup.py); without a compiler npk uses its torch rules.
install: torch
	$(PIP) install --quiet -e .

install-test: torch
	$(PIP) install --quiet -e ".[dev,ntref,dist]"

# Rebuild the kernel in place after editing csrc/conv_npk.cpp (the build of `pip install`, in its own
# build environment: setuptools>=68 whatever the venv holds).
ext: $(PY)
	$(PIP) install --quiet --no-deps -e .

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

# The suite without the tests marked slow (notebooks, killed processes, Dask clusters).
test-quick: install-test
	$(PY) -m pytest -q -m "not slow" tests

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
	rm -rf $(VENV) build *.egg-info runs npk/kernels/_conv_npk*.so
