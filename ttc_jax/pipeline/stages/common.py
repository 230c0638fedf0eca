"""Config sections that many stages read: the seed, the test problems, the policy's sampling
and the reports' difficulty bins. Their checks; each stage's own sections are checked in its
module (``Stage.checks``)."""

from __future__ import annotations

import ml_collections

from ttc_jax.pipeline import config as config_lib
from ttc_jax.pipeline.config import ConfigError
from ttc_jax.pipeline.config import Facts
from ttc_jax.pipeline.config import check_int
from ttc_jax.sampling.core import SamplingParams


def check_train_range(first: int, num: int, known: Facts, what: str) -> None:
  """Train problems ``first`` .. ``first + num - 1`` of ``what`` exist in the task."""
  if known.num_train is not None and first + num > known.num_train:
    raise ConfigError(f"{what}: train problems {first}..{first + num - 1} but the task has "
                      f"{known.num_train} (task.num_train).")


def held_out_train_ranges(c: ml_collections.ConfigDict) -> list[tuple[str, int, int]]:
  """The train problems choices are made on, (what, first, end) each, where the experiment has
  the stage: the verifier choice's (verifiers ranked) and adaptive allocation's (its
  parameters chosen). A verifier trained on them would look better there than it is."""
  out = []
  vc = c.get("verifier_choice")
  if vc is not None and config_lib.filled_by(c, "verifier_choice") is not None:
    first = c.mc_labels.num_problems if vc.first_problem is None else vc.first_problem
    out.append(("verifier_choice", first, first + vc.num_problems))
  ac = c.get("allocation")
  if ac is not None and vc is not None and config_lib.filled_by(c, "allocation") is not None:
    a = allocation_first_problem(c)
    out.append(("allocation", a, a + ac.num_problems))
  return out


def allocation_first_problem(c: ml_collections.ConfigDict) -> int:
  """Adaptive allocation's first train problem: ``allocation.first_problem``, or right after
  the verifier choice's problems (after the MC-labelled ones when it has no first problem)."""
  if c.allocation.first_problem is not None:
    return c.allocation.first_problem
  vc = c.verifier_choice
  start = c.mc_labels.num_problems if vc.first_problem is None else vc.first_problem
  return start + vc.num_problems


def check_score(c: ml_collections.ConfigDict, value: str, key: str) -> None:
  """``value`` (config key ``key``) names a score the verifier evaluation computes, of a model
  this experiment has (the policy's confidence needs none)."""
  from ttc_jax.verifiers import names  # pylint: disable=g-import-not-at-top
  if value not in names.SCORES:
    raise ConfigError(f"{key}={value!r}: expected a score the verifier evaluation computes, "
                      f"one of {list(names.SCORES)}.")
  model = names.model_of(value)
  if model != names.POLICY and config_lib.filled_by(c, model) is None:
    raise ConfigError(f"{key}={value!r}: this experiment leaves the {model} stage out "
                      f"(stages.{model}=None); the policy's confidence (e.g. "
                      f"'{names.LIKELIHOOD}') needs no model.")


def check_seed(c: ml_collections.ConfigDict, known: Facts) -> None:
  del known
  check_int(c.seed, "seed", 0)


def check_test_problems(c: ml_collections.ConfigDict, known: Facts) -> None:
  if known.num_test is not None:
    check_int(c.test_problems, "test_problems", 1, known.num_test)


def check_sampling(c: ml_collections.ConfigDict, known: Facts) -> None:
  del known
  s = c.sampling
  temperature = s.temperature
  if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and \
      temperature <= 0:
    raise ConfigError(f"sampling.temperature={temperature!r}: expected > 0. Every stage draws "
                      "several samples per prompt (pass@1 estimates, MC rollouts, best-of-N, "
                      "search); at temperature 0 they are all the same sample.")
  try:
    SamplingParams(temperature=temperature, top_p=s.get("top_p", 1.0),
                   max_new_tokens=s.max_new_tokens)
  except ValueError as e:
    raise ConfigError(f"sampling: {e}") from e
  check_int(s.batch_size, "sampling.batch_size", 1)
  check_int(s.get("segment", 0), "sampling.segment", 0)


def check_report(c: ml_collections.ConfigDict, known: Facts) -> None:
  del known
  if "test_problems" in c:
    check_int(c.report.difficulty_bins, "report.difficulty_bins", 1,
              c.test_problems if isinstance(c.test_problems, int) else None)


# Checks of the shared sections, run before the stages' own.
CHECKS: dict[str, config_lib.Check] = {
    "seed": check_seed, "test_problems": check_test_problems, "sampling": check_sampling,
    "report": check_report}
