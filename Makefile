# ttc_jax: every target bootstraps its own virtualenv (.venv) on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Tests that need several devices get 8 fake CPU devices; tests/conftest.py sets it too, and
# compiles the cheap way (no LLVM optimisation, the classic fusion emitters: half the compile time).
TEST_XLA_FLAGS := --xla_force_host_platform_device_count=8
# Two workers (one per core; each builds its own session fixtures, so a third costs more than it
# gives). worksteal: a worker that runs out takes queued tests from the other, so one long e2e test
# near the end does not leave a core idle.
PYTEST_ARGS ?= -n 2 --dist worksteal -q

# Workdir of the study's parts (make verifiers).
DIR ?= runs/arith
# Stage processes at a time (independent stages side by side; --jobs in launch/run.py).
JOBS ?= 2
ARITH := experiments/arith.py

# The real-model study (make study-math): checkpoint directories, the MATH data folder,
# the sampling mesh (DATA,MODEL; -1: every device) and its workdir.
POLICY ?=
PRM ?=
DATA ?= ../shared/data
MESH ?= -1,1
MATH_DIR ?= runs/math_qwen

# Python caches compiled bytecode (__pycache__) on first import, unless PYTHONDONTWRITEBYTECODE
# is set (as in this environment): then every process compiles the source of jax, flax, orbax
# and the rest again, about 3 s of each stage process and test subprocess (a launch of
# launch/run.py: 5.4 s -> 2.4 s). The bytecode goes to .venv and to __pycache__ (git-ignored).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: study exchange distill retry-ablation verifier-axis study-paper-scale study-math study-math-smoke test test-unit bench verifiers venv venv-hf clean-venv

# --no-compile: no .pyc files for the whole of torch and transformers at install (about 40 s
# of a fresh `make test`); the modules that are imported compile on first import.
$(VENV)/.installed-base: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q --no-compile -e .
	touch $@

$(VENV)/.installed-%: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q --no-compile -e ".[$*]"
	touch $@

venv: $(VENV)/.installed-test

test: $(VENV)/.installed-test
	XLA_FLAGS="$(TEST_XLA_FLAGS)" $(PY) -m pytest $(PYTEST_ARGS) tests

# The unit tier: no study stages, no subprocess studies, no multi-process runs (pytest.ini).
test-unit: $(VENV)/.installed-test
	XLA_FLAGS="$(TEST_XLA_FLAGS)" $(PY) -m pytest $(PYTEST_ARGS) -m "not e2e and not multiprocess" tests

bench: $(VENV)/.installed-bench
	$(PY) launch/bench_sampling.py --out=runs/bench/sampling.json

# The main job: every stage of the study (policy, difficulty, MC labels, PRM, ORM, verifier
# evaluation, search sweep; revision data, revision model and ORM, revision chains)
# -> $(DIR)/study/latest/study.md (every verdict), report/latest/report.md and
# revision_report/latest/revisions.md with their figures.
# Resumable; finished stages are reused.
study: $(VENV)/.installed-base
	$(PY) launch/run.py --config=$(ARITH) --workdir=$(DIR) --jobs=$(JOBS)

# Pretraining vs test-time FLOPs (paper section 7): the larger policy (13x the parameters,
# trained on the same rows; about 35 min of training on 2 cores) and its greedy pass@1 and
# majority curve, then the study, whose compute-optimal report adds the exchange table and
# Figure 9 (`make study` alone picks this up whenever it was run). Resumable.
# Verifier quality as a controlled axis (diagnosis): search against a synthetic verifier at
# calibrated AUCs -> $(DIR)/verifier_axis/latest/axis.md, axis.png (resumable, cell by cell);
# then the study, whose study.md picks it up (like `make exchange`).
verifier-axis: $(VENV)/.installed-base
	$(PY) launch/run.py --config=$(ARITH):verifier_axis --workdir=$(DIR) --jobs=1
	$(PY) launch/run.py --config=$(ARITH) --workdir=$(DIR) --jobs=$(JOBS)

exchange: $(VENV)/.installed-base
	$(PY) launch/run.py --config=$(ARITH):large_policy_eval --workdir=$(DIR) --jobs=1
	$(PY) launch/run.py --config=$(ARITH) --workdir=$(DIR) --jobs=$(JOBS)

# Distilling test-time compute into the policy (beyond the paper): rounds of fine-tuning the
# policy on its own best-of-N weighted answers to 2000 train problems (no label; a labelled
# reference beside it; the larger architecture trained to the same total FLOPs beside the last
# round) -> $(DIR)/distill/latest/distill.md (about 11 min on 2 cores); then the
# study, whose study.md picks it up (like `make exchange`). Resumable.
distill: $(VENV)/.installed-base
	$(PY) launch/run.py --config=$(ARITH):distill --workdir=$(DIR) --jobs=1
	$(PY) launch/run.py --config=$(ARITH) --workdir=$(DIR) --jobs=$(JOBS)

# Retry data in the policy's SFT mix (issue 27's ablation; Physics of Language Models 2.2): the
# variants of revision_ablation.variants (experiments/arith.py: a retry row for 20% of the
# train problems, 1-2 erroneous solutions in the revision prompt, then the reference solution;
# at 2400 and 2880 policy steps) each make their own policy, pass@1, revision data and revision
# model in $(DIR) (about 14 min each on 2 cores); then the study, whose revisions.md sets them
# beside its own (like `make exchange`). Resumable.
retry-ablation: $(VENV)/.installed-base
	$(PY) launch/run.py --config=$(ARITH):revision_ablation --workdir=$(DIR) --jobs=1
	$(PY) launch/run.py --config=$(ARITH) --workdir=$(DIR) --jobs=$(JOBS)

# The same study at the paper's scale (500 problems, every budget and method, 3 seeds, the wider
# verifier ablation): several hours on 2 CPU cores.
study-paper-scale: $(VENV)/.installed-base
	$(PY) launch/run.py --config=experiments/arith_paper_scale.py --workdir=runs/arith_paper \
	  --jobs=$(JOBS)

# The study on real open models (experiments/math_qwen.py; its docstring gives the accelerator
# and runtime): an imported policy and PRM (local checkpoint directories) on MATH-500.
# On a TPU VM or GPU host, install its jax first (BUILD.md). Resumable.
study-math: $(VENV)/.installed-hf
	test -n "$(POLICY)" -a -n "$(PRM)" || { echo "make study-math needs POLICY=DIR PRM=DIR (checkpoint directories)"; exit 2; }
	$(PY) launch/run.py --config=experiments/math_qwen.py --workdir=$(MATH_DIR) \
	  --config.task.data_dir=$(DATA) --config.hf_policy.path=$(POLICY) \
	  --config.hf_prm.path=$(PRM) --mesh=$(MESH)

# The real-model study's CPU smoke run: random tiny checkpoints of its architectures
# (launch/tiny_checkpoints.py) and its :smoke preset (4 problems, budgets 1 and 4). It checks
# the wiring, not results (the models are random). About a minute.
SMOKE_DIR ?= runs/math_smoke
study-math-smoke: $(VENV)/.installed-test
	$(PY) launch/tiny_checkpoints.py --out=$(SMOKE_DIR)/checkpoints --data=$(DATA)
	$(PY) launch/run.py --config=experiments/math_qwen.py:smoke --workdir=$(SMOKE_DIR) \
	  --config.task.data_dir=$$(test -f $(DATA)/math/test.jsonl && echo $(DATA) || echo $(SMOKE_DIR)/checkpoints/data) \
	  --config.hf_policy.path=$(SMOKE_DIR)/checkpoints/policy \
	  --config.hf_prm.path=$(SMOKE_DIR)/checkpoints/prm

venv-hf: $(VENV)/.installed-hf

# The stages up to the verifier evaluation (policy, MC-labelled PRM, ORM).
verifiers: $(VENV)/.installed-base
	$(PY) launch/run.py --config=$(ARITH):verifier_eval --workdir=$(DIR)

clean-venv:
	rm -rf $(VENV)
