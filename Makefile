# Two commands for a newcomer: `make demo` and `make test`. Both build .venv from the
# pinned requirements on first use (and again whenever a requirements file changes).
# `make demo TF=gpu` (or test, ...) uses TensorFlow's GPU build instead: requirements-gpu.txt,
# in its own .venv-gpu, so that no tracked file needs an edit.
PYTHON ?= python3
TF ?= cpu
ifeq ($(filter cpu gpu,$(TF)),)
$(error TF must be cpu or gpu, not '$(TF)')
endif
VENV := $(if $(filter gpu,$(TF)),.venv-gpu,.venv)
REQUIREMENTS := $(if $(filter gpu,$(TF)),requirements-gpu.txt,requirements.txt)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: venv lint test quick-test demo bench clean

$(STAMP): $(REQUIREMENTS) requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check \
	  -r $(REQUIREMENTS) -r requirements-test.txt
	touch $(STAMP)

venv: $(STAMP)

# The linter runs first: `make test` fails on an unused import or an undefined name.
lint: $(STAMP)
	$(PY) -m ruff check --no-cache .

test: lint
	$(PY) -m pytest -q --durations=15 tests

quick-test: lint
	$(PY) -m pytest -q -m "not slow" tests

demo: $(STAMP)
	$(PY) demo.py

bench: $(STAMP)
	$(PY) benchmarks/run_benchmarks.py

clean:
	rm -rf .venv .venv-gpu demo_output
