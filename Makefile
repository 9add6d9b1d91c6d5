# Two entry points for a fresh machine: `make demo` and `make test`.
# Both build a local virtual environment first: torch 2.13.0 (CPU build) is installed on its
# own before the project, so that no other requirement re-resolves it to a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/megaset run

test: venv
	$(PY) -m pytest

clean:
	rm -rf megaset-demo
