# Two commands for a newcomer: `make demo` and `make test`. Both build .venv from the
# pinned requirements on first use (and again whenever a requirements file changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: venv lint test quick-test demo bench clean

$(STAMP): requirements.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	touch $(STAMP)

venv: $(STAMP)

# The linter runs first: `make test` fails on an unused import or an undefined name.
lint: $(STAMP)
	$(PY) -m ruff check --no-cache .

test: lint
	$(PY) -m pytest -q tests

quick-test: lint
	$(PY) -m pytest -q -m "not slow" tests

demo: $(STAMP)
	$(PY) demo.py

bench: $(STAMP)
	$(PY) benchmarks/run_benchmarks.py

clean:
	rm -rf $(VENV) demo_output
