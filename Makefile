# Entry points for a fresh machine: `make demo`, `make test`, `make test-slow`, `make lint` and `make bench`.
# Each builds a local virtual environment first, from the lock: torch 2.13.0 (CPU build) on its
# own (requirements/torch.txt), then every other package at the version of requirements/lock.txt,
# then the project itself without resolving anything again, so that the two README commands
# install the same versions on every machine and nothing re-resolves torch to a CUDA build.
# Two locks, the two ends of the ranges of pyproject.toml: requirements/lock.txt holds the newest
# versions (`make lock`, what .venv installs); requirements/lock-lowest.txt the lowest that the
# ranges allow for the direct dependencies (`make lock-lowest`), which `make test-lowest` installs
# into .venv-lowest to run the fast suite there. torch is held at its pin in both.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv lock lock-lowest demo test test-slow test-lowest lint typecheck bench clean

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

# The lowest lock: each direct dependency at the lowest version its range allows (and its own
# dependencies at the newest that fit), resolved by uv, which pip-tools cannot do. uv reads no pip
# configuration: it is handed pip's find-links, where the CPU build of the pinned torch lies, and
# holds torch at that build (+cpu), so that the CUDA wheels that torch pulls from PyPI stay out;
# --upgrade: the pins already in the file are no preference, the resolution starts afresh.
LOWEST := .venv-lowest
FIND_LINKS = $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)

lock-lowest:
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install --quiet uv
	sed 's/$$/+cpu/' requirements/torch.txt > $(VENV)-lock/torch-cpu.txt
	$(VENV)-lock/bin/uv pip compile --quiet --upgrade --resolution lowest-direct --extra test --python $(VENV)-lock/bin/python \
		$(foreach link,$(FIND_LINKS),--find-links $(link)) -c $(VENV)-lock/torch-cpu.txt \
		--no-emit-package torch --no-emit-package megaset --custom-compile-command "make lock-lowest" -o requirements/lock-lowest.txt pyproject.toml
	rm -rf $(VENV)-lock

demo: venv
	$(VENV)/bin/megaset run

# The suite in two halves that CI runs one after the other: the tests of the modules, then the
# end-to-end ones marked slow (whole commands, clusters of their own, faults injected).
test: venv
	$(PY) -m pytest -m "not slow"

test-slow: venv
	$(PY) -m pytest -m slow

# The fast suite at the lower bounds: torch from its pin, every other package from the lowest lock,
# the project without resolving again (pip check says whether the lowest versions fit together).
$(LOWEST)/.installed: pyproject.toml requirements/lock-lowest.txt requirements/torch.txt
	rm -rf $(LOWEST)
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet --upgrade pip
	$(LOWEST)/bin/python -m pip install --quiet -r requirements/torch.txt
	$(LOWEST)/bin/python -m pip install --quiet -r requirements/lock-lowest.txt
	$(LOWEST)/bin/python -m pip install --quiet --no-deps -e .
	$(LOWEST)/bin/python -m pip check
	touch $@

test-lowest: $(LOWEST)/.installed
	$(LOWEST)/bin/python -m pytest -m "not slow"

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
