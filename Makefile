# Entry points for a fresh machine: `make demo`, `make test`, `make test-slow`, `make lint` and `make bench`.
# Each builds a local virtual environment first, from the lock: torch 2.13.0 (CPU build) on its
# own (requirements/torch.txt), then every other package at the version of requirements/lock.txt,
# then the project itself without resolving anything again, so that the two README commands
# install the same versions on every machine and nothing re-resolves torch to a CUDA build.
# `make lock` regenerates the lock from the ranges of pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv lock demo test test-slow lint typecheck bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/lock.txt requirements/torch.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/torch.txt
	$(PY) -m pip install --quiet -r requirements/lock.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

# The lock: every package the project and its test extra (which installs every other extra)
# need, resolved with torch held at its pin and written without torch, nor the project itself.
lock:
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install --quiet pip-tools
	$(VENV)-lock/bin/pip-compile --quiet --extra test --strip-extras --unsafe-package torch --unsafe-package megaset \
		--no-emit-index-url --no-emit-find-links -c requirements/torch.txt -o requirements/lock.txt pyproject.toml
	rm -rf $(VENV)-lock

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
