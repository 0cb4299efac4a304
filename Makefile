# Two entry points a new user needs: `make demo` (the quickstart scenario) and `make test`.
# Both create the virtual environment on first use. torch is pinned and installed first so a
# CPU-only machine never downloads a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test test-all bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/fedsim run scenarios/quickstart.yaml

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

bench: install
	$(PY) benchmarks/engine_overhead.py

clean:
	rm -rf runs .pytest_cache
