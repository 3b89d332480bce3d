# kdlab: `make demo` sets everything up (idempotently) and runs the default experiment; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup data browser demo test bench clean

setup: $(VENV)/.kdlab-installed data

# torch is pinned first so that the package's own `torch>=2.2` is already satisfied by the local CPU build.
$(VENV)/.kdlab-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e .
	touch $@

# What the tests need besides (Ray, onnxruntime, Jupyter's kernel...): only `make test` installs it.
$(VENV)/.kdlab-test-installed: $(VENV)/.kdlab-installed pyproject.toml
	$(PY) -m pip install -q -e '.[test]'
	touch $@

data:
	@if [ -n "$$KDLAB_FASHION_MNIST" ] || [ -f "$(FMNIST_DIR)/train-images-idx3-ubyte.gz" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
		(apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'," \
		     "or put its four IDX .gz files in a folder and set KDLAB_FASHION_MNIST=that/folder"; exit 1; \
	fi

# Headless Chromium for the report's browser test and first_screen.png (Debian's package; never `playwright install`).
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Chromium (Debian package chromium) for the report's browser test"; \
		(apt-get install -y -qq chromium || (apt-get update -qq && apt-get install -y -qq chromium)) >/dev/null; \
	else \
		echo "Chromium is missing: the report's browser test will be skipped ('sudo apt-get install chromium')"; \
	fi

demo: setup
	$(PY) -m kdlab run

test: setup $(VENV)/.kdlab-test-installed browser
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m mypy
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/kd_throughput.py --contend

clean:
	rm -rf runs experiments .pytest_cache
