"""The names of the verifier scores the study compares: built and read here only.

A score name says which model scored a solution and how: ``prm_last``, ``prm_min`` and
``prm_prod`` are the PRM's step scores aggregated (:data:`STEP_AGGREGATIONS`), ``orm`` the
ORM's score of the whole solution, ``policy_likelihood`` the policy's least likely generated
token (a reference that needs no training), ``conf_<token>_<aggregation>`` the policy's
confidence in its tokens (:mod:`ttc_jax.verifiers.confidence`; ``conf_logprob_min`` is
``policy_likelihood`` and goes by that name), ``implicit_prm`` and ``dpo`` the LM-head
verifiers' implicit reward of the whole solution (:mod:`ttc_jax.verifiers.implicit`),
``sft_lm`` its likelihood under an LM trained further on reference solutions
(:mod:`ttc_jax.verifiers.likelihood`; each score and the stage that trains its model have the
same name), ``ens_<base>`` an ensemble of a
base verifier's score and the policy's confidence fitted on held-out train problems
(:mod:`ttc_jax.verifiers.ensemble`; ``ens_conf``: the confidence measures alone).
"""

from __future__ import annotations

from ttc_jax.verifiers import confidence
from ttc_jax.verifiers import ensemble
from ttc_jax.verifiers.scoring import STEP_AGGREGATIONS

PRM, ORM, POLICY = "prm", "orm", "policy"  # the models that score
LIKELIHOOD = "policy_likelihood"
IMPLICIT_PRM, DPO, SFT_LM = "implicit_prm", "dpo", "sft_lm"
LM_VERIFIERS = (IMPLICIT_PRM, DPO, SFT_LM)  # LM heads trained from the policy (their stages' names)


def prm_score(aggregation: str) -> str:
  """The name of the PRM's step scores aggregated by ``aggregation`` (e.g. 'prm_last')."""
  if aggregation not in STEP_AGGREGATIONS:
    raise ValueError(f"step aggregation {aggregation!r}: expected one of {STEP_AGGREGATIONS}.")
  return f"{PRM}_{aggregation}"


PRM_SCORES = tuple(prm_score(h) for h in STEP_AGGREGATIONS)
# Every confidence measure but the least likely token (the likelihood reference).
CONFIDENCE_SCORES = tuple(confidence.Measure(t, a).name for t in confidence.TOKEN_CONFIDENCES
                          for a in confidence.AGGREGATIONS if (t, a) != ("logprob", "min"))
SCORES = PRM_SCORES + (ORM,) + LM_VERIFIERS + (LIKELIHOOD,) + CONFIDENCE_SCORES


def measure_of(score: str) -> confidence.Measure | None:
  """The confidence measure a score name stands for (the likelihood reference included);
  None for a name of a trained verifier; a malformed conf_* name is an error naming it."""
  if score == LIKELIHOOD:
    return confidence.Measure("logprob", "min")
  if score.startswith(confidence.PREFIX + "_"):
    return confidence.Measure.from_name(score)
  return None


def model_of(score: str) -> str | None:
  """The model a score name needs ('prm', 'orm', 'policy' or an LM-head verifier's); None
  for a name of none."""
  if score in PRM_SCORES:
    return PRM
  if score in LM_VERIFIERS:
    return score
  if measure_of(score) is not None:
    return POLICY
  return {ORM: ORM}.get(score)


ENSEMBLE_BASES = (ensemble.CONF, PRM) + LM_VERIFIERS  # ens_<base>: verifier_choice fits them


def ensemble_base(score: str) -> str | None:
  """The base of an ensemble's score name (one of :data:`ENSEMBLE_BASES`); None for another
  name, a one-line error for an ens_ name of an unknown base."""
  base = ensemble.base_of(score)
  if base is not None and base not in ENSEMBLE_BASES:
    raise ValueError(f"verifier ensemble {score!r}: expected {ensemble.PREFIX}<base> with base "
                     f"one of {ENSEMBLE_BASES}.")
  return base


def base_score(base: str) -> str | None:
  """The score an ensemble's base verifier contributes (None: 'conf', the confidence alone)."""
  return prm_score("last") if base == PRM else base if base in LM_VERIFIERS else None


def charged_model(score: str) -> str | None:
  """The model whose FLOPs a score costs: :func:`model_of`, or an ensemble's base model (the
  policy for 'ens_conf': its confidence comes with the samples)."""
  base = ensemble_base(score)
  if base is None:
    return model_of(score)
  return POLICY if base == ensemble.CONF else model_of(base_score(base))
