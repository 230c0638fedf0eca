"""The one registry of stages, by paper section (a module each).

Each module holds its stages' run functions, loaders, config checks and
:class:`~ttc_jax.pipeline.stage.Stage` records; this registry lists them in run order: a stage
comes after every stage it reads. Everything the pipeline knows of a stage is on its record:
what it reads (``inputs``, ``optional``, ``may_lack``) and writes (``outputs``, ``load``), its
config sections and their checks (``sections``, ``checks``), its speed-only keys, its version
and changelog, its cost and whether it trains (the --jobs scheduler), and, for a stage that
fills the policy or PRM role, how its lengths are checked and what it holds on a device
(``lengths``, ``held``). To add a stage: write its module (or add to one) with its record, give
its section defaults in the experiment configs (shared sections: ttc_jax/configs/common.py),
and add the record to ``STAGES`` below.
"""

from __future__ import annotations

from ttc_jax.pipeline import config as config_lib
from ttc_jax.pipeline.stage import Stage
from ttc_jax.pipeline.stages import allocation
from ttc_jax.pipeline.stages import common
from ttc_jax.pipeline.stages import compute_optimal
from ttc_jax.pipeline.stages import data
from ttc_jax.pipeline.stages import difficulty
from ttc_jax.pipeline.stages import distill
from ttc_jax.pipeline.stages import exchange
from ttc_jax.pipeline.stages import hybrid
from ttc_jax.pipeline.stages import models
from ttc_jax.pipeline.stages import report
from ttc_jax.pipeline.stages import revisions
from ttc_jax.pipeline.stages import search
from ttc_jax.pipeline.stages import verifier_axis
from ttc_jax.pipeline.stages import verifier_eval
from ttc_jax.pipeline.stages import verifiers

STAGES: dict[str, Stage] = {s.name: s for s in [
    data.DATA,
    data.TOKENIZER,
    models.POLICY,
    models.HF_POLICY,
    models.LARGE_POLICY,
    exchange.LARGE_POLICY_EVAL,
    difficulty.DIFFICULTY,
    verifiers.MC_LABELS,
    revisions.REVISION_DATA,
    revisions.REVISION_MODEL,
    revisions.REVISION_ABLATION,
    verifiers.PRM,
    models.HF_PRM,
    verifiers.ORM,
    verifiers.VERIFIER_SAMPLES,
    verifiers.IMPLICIT_PRM,
    verifiers.DPO,
    verifiers.SFT_LM,
    revisions.REVISION_ORM,
    revisions.REVISION_SWEEP,
    verifier_eval.VERIFIER_CHOICE,  # before the evaluation: it fits the ensembles there
    verifier_eval.VERIFIER_EVAL,
    verifier_eval.VERIFIER_ABLATION,
    allocation.ALLOCATION,
    search.SEARCH_SWEEP,
    hybrid.HYBRID_SWEEP,
    verifier_axis.VERIFIER_AXIS,
    report.REPORT,
    report.REVISION_REPORT,
    compute_optimal.COMPUTE_OPTIMAL,
    search.CHOSEN_SEARCH,
    distill.DISTILL,
    report.STUDY,
]}

# Config keys shared by many stages that change how fast they run, never what they compute
# (fnmatch patterns of dotted keys): the sampling batch, training's checkpoint and log
# intervals. With each stage's own (Stage.speed_only) they are left out of identities.
SHARED_SPEED_ONLY = ("sampling.batch_size", "sampling.segment", "*.checkpoint_every",
                     "*.log_every")
SPEED_ONLY = SHARED_SPEED_ONLY + tuple(p for s in STAGES.values() for p in s.speed_only)

# Config keys added after artifacts were made with the behaviour of their default: left out
# of identities at that default, so those artifacts stay valid (any other value is keyed).
# Paths or fnmatch patterns, as SPEED_ONLY.
ADDED_KEYS = {"sampling.top_p": 1.0, "*.pack_width": 0, "*search.advantage": 0.0,
              "prm.holdout": 0.0, "orm.holdout": 0.0, "prm.holdout_every": 100,
              "orm.holdout_every": 100, "*policy.retry_rate": 0.0, "*policy.retry_attempts": 2,
              "revisions.verifier": "prm"}

# The check of every config section: the shared sections' (common.CHECKS), then each stage's
# own in run order (pipeline.config.validate runs those of the sections a run reads).
CHECKS: dict[str, config_lib.Check] = dict(common.CHECKS)
for _stage in STAGES.values():
  for _section, _check in _stage.checks.items():
    if _section in CHECKS:
      raise ValueError(f"config section {_section!r} is checked by two stages")
    CHECKS[_section] = _check

# Stages that run before the token-length, reference and memory checks.
BEFORE_CHECKS = tuple(name for name, s in STAGES.items() if s.before_checks)

__all__ = ["ADDED_KEYS", "BEFORE_CHECKS", "CHECKS", "SPEED_ONLY", "STAGES", "Stage"]
