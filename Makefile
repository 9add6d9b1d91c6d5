# Entry points for a fresh machine: `make demo`, `make test`, `make test-slow`, `make lint` and `make bench`.
# Each builds a local virtual environment first: torch 2.13.0 (CPU build) is installed on its
# own before the project, so that no other requirement re-resolves it to a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-slow lint typecheck bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/megaset run

# The suite in two halves that CI runs one after the other: the tests of the modules, then the
# end-to-end ones marked slow (whole commands, clusters of their own, faults injected).
test: venv
	$(PY) -m pytest -m "not slow"

test-slow: venv
	$(PY) -m pytest -m slow

# ruff (rules in pyproject.toml) and mypy over the package as it is installed.
lint: venv
	$(VENV)/bin/ruff check .
	$(MAKE) typecheck

typecheck: venv
	$(PY) .ci/typecheck.py

# The whole-pipeline benchmark at sizes that take a few minutes; pass larger ones explicitly:
# $(PY) benchmarks/run_all.py --events 8000000 --compare 1000000
bench: venv
	$(PY) benchmarks/run_all.py --events 2000000 --compare 1000000

clean:
	rm -rf megaset-demo
