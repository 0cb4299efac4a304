# Two entry points a new user needs: `make demo` (the quickstart scenario) and `make test`.
# Both create the virtual environment on first use. torch is pinned and installed first so a
# CPU-only machine never downloads a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test test-all test-cluster lint package-check bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev,cluster]"
	touch $@

demo: install
	$(VENV)/bin/fedsim run scenarios/quickstart.yaml

test: install
	$(PY) -m pytest -q --durations=15

test-cluster: install
	$(PY) -m pytest -q -m cluster -s

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

lint: install
	$(VENV)/bin/ruff check .

# A plain `pip install .` (no extras, no editable) into a fresh virtual environment must be enough to
# list the plug-ins and validate every shipped scenario: every runtime import is declared.
PKG_VENV ?= $(or $(TMPDIR),/tmp)/fedsim-package-check
package-check:
	rm -rf $(PKG_VENV)
	$(PYTHON) -m venv $(PKG_VENV)
	$(PKG_VENV)/bin/python -m pip install -q --upgrade pip
	$(PKG_VENV)/bin/python -m pip install -q $(TORCH_PIN)
	$(PKG_VENV)/bin/python -m pip install -q .
	cd $(PKG_VENV) && ./bin/fedsim list > /dev/null && ./bin/fedsim validate $(CURDIR)/scenarios/*.yaml
	cd $(PKG_VENV) && ./bin/python -c "import importlib, pkgutil, fedsim; \
		[importlib.import_module(m.name) for m in pkgutil.walk_packages(fedsim.__path__, 'fedsim.') \
		 if not m.name.endswith('__main__')]; print('every installed module imports')"
	rm -rf $(PKG_VENV) build

bench: install
	$(PY) benchmarks/engine_overhead.py

clean:
	rm -rf runs .pytest_cache
