# The two set-up commands: `make run` and `make test`. Both create .venv first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell devstack/find-python.sh)
STAMP := $(VENV)/.installed

.PHONY: run test venv bootstrap clean bench

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt devstack/find-python.sh
	@if [ -z "$(PYTHON)" ]; then \
	  echo "error: no Python 3.13 (or 3.12) found. Install one (e.g. 'pyenv install 3.13.0')" \
	       "or point at it: make PYTHON=/path/to/python3.13 $(MAKECMDGOALS)" >&2; exit 1; fi
	@command -v "$(PYTHON)" >/dev/null 2>&1 || { echo "error: PYTHON=$(PYTHON) is not a program" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 12) else \
	  "error: $(PYTHON) is Python %d.%d; ml-api needs 3.13 (or 3.12): Chalice deploys to the Lambda runtime of the local Python" % sys.version_info[:2])'
	$(PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

run: venv
	$(PY) -m devstack.run

test: venv
	$(PY) -m pytest

# Benchmarks (bench/, local only): writes BENCHMARKS.md and prints it. A few minutes.
bench: venv
	$(PY) -m bench

bootstrap: venv
	$(PY) -m devstack.bootstrap

clean:
	rm -rf $(VENV) .devstack .pytest_cache
