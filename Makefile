# ttc_jax: every target bootstraps its own virtualenv (.venv) on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Tests that need several devices get 8 fake CPU devices (tests/conftest.py sets it too).
TEST_XLA_FLAGS := --xla_force_host_platform_device_count=8
PYTEST_ARGS ?= -n 2 -q

.PHONY: test bench venv clean-venv

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

clean-venv:
	rm -rf $(VENV)
