# Two commands do everything: `make train` (set up + run the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup train test test-fast bench clean

# Project-local virtual environment with every version pinned by constraints.txt.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $@

# Train the default model on the embedded digits data: `make train ARGS="model=cnn"`.
train: setup
	$(PY) train.py $(ARGS)

# Every test tier (fast unit tests and integration runs).
test: setup
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

# The fast tier only (what plain `pytest` runs).
test-fast: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks (bench/README.md): print ratios against a baseline measured in the same process.
bench: setup
	$(PY) bench/bench_data.py
	$(PY) bench/bench_drift.py
	$(PY) bench/bench_inference.py
	$(PY) bench/bench_startup.py
	$(PY) bench/bench_e2e.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_scaling.py

clean:
	rm -rf outputs .pytest_cache
