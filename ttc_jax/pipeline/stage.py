"""What one stage is: its record (what it reads, which config sections are its own, what it
writes, how it runs, validates and is scheduled) and the context its run function receives.

A stage's run function receives a :class:`Context`: its own config sections (nothing else of
the config is visible to it), its inputs as loaded objects (the task's data, a tokenizer, model
artifacts with their sampling core or scorer, labelled samples, ...) and a
:class:`~ttc_jax.pipeline.artifacts.StageDir` for its own outputs; never a workdir path. The
library does the work; a run function only wires it.

An artifact's identity is a hash of its stage's key: the stage name and version, its config
sections (minus fields that only change speed, which results never depend on) and the
identities of its inputs. Any change upstream therefore gives every downstream artifact a new
identity (a new directory), and nothing else changes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from absl import logging
import ml_collections

from ttc_jax.pipeline import artifacts
from ttc_jax.pipeline.config import ConfigError
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.verifiers import confidence
from ttc_jax.verifiers import ensemble
from ttc_jax.verifiers import names
from ttc_jax.verifiers.base import Verifier


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A model to sample from on the run's task, as the stages that sample use it."""

  artifact: artifacts.ModelArtifact
  task: Any  # the task of the run's data (ttc_jax.tasks)
  config: ml_collections.ConfigDict  # the stage's sections (its ``sampling`` section)

  @property
  def tokenizer(self):
    return self.artifact.tokenizer

  @property
  def core(self) -> SamplingCore:
    return self.artifact.sampling_core()  # kept by the artifact: compiled once per process

  @property
  def sp(self) -> SamplingParams:
    return sampling_params(self.config)


@dataclasses.dataclass
class Context:
  """What a stage's run function receives."""

  config: ml_collections.ConfigDict  # the stage's own sections only
  inputs: dict[str, Any]  # input stage name -> loaded artifact
  out: artifacts.StageDir  # this stage's outputs
  log: Callable[[str], None] = logging.info
  # variant(stage, overrides) -> (loaded artifact, its stage record): the artifact of
  # ``stage`` under the experiment config with ``overrides`` ({dotted key: value}),
  # run (with what it is missing) or reused by identity (the ablation's variants).
  variant: Callable[[str, dict], tuple[Any, dict]] | None = None

  def sampler(self, role: str = "policy") -> Sampler:
    """The model of ``role`` (an input) with the run's task and sampling params."""
    return Sampler(artifact=self.inputs[role], task=self.inputs["data"].task, config=self.config)

  def verifier(self, name: str) -> Verifier:
    """The verifier a config names (e.g. ``search.verifier``): 'prm', the PRM input (trained
    or imported), an LM-head verifier trained from the policy ('implicit_prm', 'dpo',
    'sft_lm'), or the policy's confidence in its own tokens ('policy_likelihood',
    conf_<token>_<aggregation>; see :func:`check_verifier_name`)."""
    policy = self.inputs["policy"]
    if names.ensemble_base(name) is not None:
      fitted = (self.inputs.get("verifier_choice") or {}).get("ensembles") or {}
      if name not in fitted:
        raise ConfigError(f"verifier {name!r}: verifier_choice fitted no such ensemble (it "
                          f"fitted {sorted(fitted)}; a stage reads them through its "
                          "'verifier_choice' input).")
      ens = ensemble.Ensemble.from_json(fitted[name])
      parts = [names.PRM if k == names.prm_score("last") else k for k in ens.components]
      return ensemble.EnsembleVerifier(ens, [self.verifier(k) for k in parts], name)
    if name == names.PRM:
      return self.inputs["prm"].verifier(policy.tokenizer)
    if name in names.LM_VERIFIERS:
      if self.inputs.get(name) is None:
        raise ConfigError(f"verifier {name!r}: this experiment has no {name} stage (its "
                          f"'stages.{name}' is None).")
      return self.inputs[name].lm_verifier(policy)
    return policy.confidence_verifier(names.measure_of(name))


def check_verifier_name(name, key: str) -> None:
  """A config's verifier name (``key``: where it was set) is one :meth:`Context.verifier`
  knows, else a one-line ConfigError naming it."""
  try:
    ok = isinstance(name, str) and (name in (names.PRM,) + names.LM_VERIFIERS
                                    or names.measure_of(name) is not None
                                    or names.ensemble_base(name) is not None)
  except ValueError as e:
    raise ConfigError(f"{key}={name!r}: {e}") from e
  if not ok:
    raise ConfigError(f"{key}={name!r}: expected 'prm' (the study's PRM), "
                      f"{' or '.join(repr(v) for v in names.LM_VERIFIERS)} (LM-head verifiers "
                      f"trained from the policy), '{names.LIKELIHOOD}' or "
                      "conf_<token>_<aggregation> with token one of "
                      f"{confidence.TOKEN_CONFIDENCES} and aggregation one of "
                      f"{confidence.AGGREGATIONS} (the policy's confidence), or "
                      f"{ensemble.PREFIX}<base> (an ensemble verifier_choice fits: base one of "
                      f"{names.ENSEMBLE_BASES}).")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage:
  """Everything the pipeline knows of one stage (``pipeline.stages`` registers them)."""

  name: str
  doc: str
  inputs: tuple[str, ...] = ()  # the roles whose artifacts it reads (a role: a stage's name)
  sections: tuple[str, ...] = ()  # its config sections (top-level keys of the experiment config)
  outputs: tuple[str, ...] = ()  # files it writes in its directory
  run: Callable[[Context], dict]  # computes and writes; returns a JSON summary
  load: Callable[[artifacts.StageDir, dict], Any]  # (directory, key) -> loaded artifact
  version: int = 1  # bump when the stage computes something else from the same key
  changelog: tuple[str, ...] = ()  # why each version after the first was made
  # Stages read when their artifact is finished, never run for this one (part of its identity).
  optional: tuple[str, ...] = ()
  # The role this stage can fill for others (an experiment's ``stages`` config maps a role,
  # e.g. 'policy', to a stage that fills it, e.g. 'hf_policy'); default: its own name.
  fills: str | None = None
  # Inputs an experiment may leave out (its ``stages`` maps them to None); the run
  # function then finds no such key in ``ctx.inputs``.
  may_lack: tuple[str, ...] = ()
  # (the config, an input role) -> whether this config reads that input (None: every input
  # is read). An input not read is not part of its identity, is not run for it and is not in
  # ``ctx.inputs`` (e.g. the search sweep reads an LM-head verifier only when
  # search.verifier names it): retraining it never makes the sweep run again.
  reads: Callable[[ml_collections.ConfigDict, str], bool] | None = None
  # (its config sections, a digest cache path) -> what its result depends on beyond the
  # config (e.g. the sha256 of an imported checkpoint's files): part of its identity.
  fingerprint: Callable[[ml_collections.ConfigDict, str], dict] | None = None
  # Keys of its own sections that change how fast it runs, never what it computes (fnmatch
  # patterns of dotted keys): left out of its identity.
  speed_only: tuple[str, ...] = ()
  # Seconds on the default study: `make study` (--jobs 2) from an empty workdir and an empty
  # XLA cache, measured at 9675383 on 2 cores (AMD EPYC); verifier_ablation includes the PRM
  # variants it trains. The stages outside `make study` (large policy, distill, revision
  # ablation, verifier axis) keep earlier estimates. Only the order in which a --jobs run
  # starts ready stages depends on it: the one with the costliest path to the target first,
  # so the long chain never waits for a slot held by a short side branch (pipeline.jobs).
  # Replaying that study's stage times through the scheduler: 2319 s with the 0f5300a
  # estimates, 2281 s with these (the revision model had been put at 350 s, not 770).
  cost_s: int = 1
  # It trains a model: its --jobs stage process gets one XLA CPU device per core and the
  # trainer's 'data' mesh spans them (alone on 2 cores: 1.24x the steps/s of one device; the
  # PRM and the ORM side by side took 305 s with two devices each, 330 s with one), as the
  # --jobs=1 process has (launch/run.py): a trained artifact is the same with any --jobs.
  # The other stages keep one device (sampling in a two-device process ran 19-34% slower).
  trains: bool = False
  # It runs before the token-length, reference and memory checks (it needs no model, or is
  # what those checks read).
  before_checks: bool = False
  # It reads the task's train problems (the reference check covers them when it runs).
  reads_train: bool = False
  # For a stage that fills the policy role: (the config, the task's data, a loader of the
  # run's artifacts by role) -> a log line, after checking that its prompts and solutions fit
  # the sampling budget and its context (ConfigError otherwise).
  lengths: Callable[[ml_collections.ConfigDict, Any, Callable[[str], Any]], str] | None = None
  # For a stage that fills the policy or the PRM role: (the config) -> what it holds on a
  # device when it samples or scores (pipeline.config.Held), for the memory planner.
  held: Callable[[ml_collections.ConfigDict], Any] | None = None
  # The checks of the config sections it owns: {section: (config, Facts) -> None, raising
  # ConfigError}; run for a section that the stages of a run read (pipeline.config.validate).
  checks: Mapping[str, Callable[[ml_collections.ConfigDict, Any], None]] = dataclasses.field(
      default_factory=dict)


def sampling_params(c: ml_collections.ConfigDict) -> SamplingParams:
  """The policy's sampling in every stage that samples (``sampling`` section)."""
  return SamplingParams(temperature=c.sampling.temperature,
                        top_p=c.sampling.get("top_p", 1.0),
                        max_new_tokens=c.sampling.max_new_tokens)


def segment(c: ml_collections.ConfigDict) -> int | None:
  """Continuous batching's decode steps between refills (``sampling.segment``; None: static
  batches). Speed only: the tokens are the same."""
  return c.sampling.get("segment", 0) or None


def load_model(out: artifacts.StageDir, key: dict) -> artifacts.ModelArtifact:
  del key
  return artifacts.load_model(out.dir, out.identity)


# ----------------------------------------------------------------------------
# imported checkpoints (Hugging Face directories, used in place)


def load_json(name: str):
  def load(out: artifacts.StageDir, key: dict) -> dict:
    del key
    return out.read_json(name)
  return load


# ----------------------------------------------------------------------------
# the search sweep


# What a stage that trains a model writes.
MODEL_OUTPUTS = ("model.json", "checkpoints", "metrics.jsonl")
