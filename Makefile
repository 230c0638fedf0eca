# ttc_jax: every target bootstraps its own virtualenv (.venv) on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Tests that need several devices get 8 fake CPU devices (tests/conftest.py sets it too).
TEST_XLA_FLAGS := --xla_force_host_platform_device_count=8
PYTEST_ARGS ?= -n 2 -q

# Workdir of the study's parts (make verifiers).
DIR ?= runs/arith
ARITH := experiments/arith.py

.PHONY: study test bench verifiers venv clean-venv

$(VENV)/.installed-base: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-%: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[$*]"
	touch $@

venv: $(VENV)/.installed-test

test: $(VENV)/.installed-test
	XLA_FLAGS="$(TEST_XLA_FLAGS)" $(PY) -m pytest $(PYTEST_ARGS) tests

bench: $(VENV)/.installed-bench
	$(PY) launch/bench_sampling.py --out=runs/bench/sampling.json

# The main job: trains (or reuses) policy, PRM and ORM, then the search sweep ->
# $(DIR)/study/report.md, results.json and figures. Resumable.
study: $(VENV)/.installed-base
	$(PY) launch/study.py --config=$(ARITH):study --workdir=$(DIR)

# Policy SFT + pass@1, MC-labelled PRM, ORM, verifier evaluation (~15 min on 2 cores).
# Each step resumes after an interruption; finished steps rerun in seconds.
verifiers: $(VENV)/.installed-base
	$(PY) launch/train.py --config=$(ARITH):policy --workdir=$(DIR)
	$(PY) launch/train.py --config=$(ARITH):prm --workdir=$(DIR)
	$(PY) launch/train.py --config=$(ARITH):orm --workdir=$(DIR)
	$(PY) launch/evaluate.py --config=$(ARITH):verifiers --workdir=$(DIR)

clean-venv:
	rm -rf $(VENV)
