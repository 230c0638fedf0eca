"""Config sections that every experiment has, with their defaults and what each field means
(big_vision's configs/common.py). An experiment takes a section and changes what differs,
e.g. ``c.sampling = common.sampling(temperature=0.7, max_new_tokens=2048)``; `launch/run.py
--help` shows the comments below for the keys an experiment does not comment itself.
"""

import ml_collections
from ml_collections import config_dict


def parse_arg(arg: str | None, default_task: str, *, tasks: tuple[str, ...] | None = None,
              switches: tuple[str, ...] = ()) -> tuple[str, str, set[str]]:
  """A config argument 'STAGE', 'task=NAME' and ``switches`` (e.g. 'smoke'), comma separated
  -> (stage, task, the switches given). ``tasks``: the tasks the experiment takes (None:
  any registered task)."""
  stage, task, given = "study", default_task, set()
  for part in filter(None, (x.strip() for x in (arg or "").split(","))):
    if part.startswith("task="):
      task = part[len("task="):]
    elif part in switches:
      given.add(part)
    elif "=" in part:
      raise ValueError(f"config argument {part!r}: expected a stage name or task=NAME"
                       + "".join(f" or {s}" for s in switches) + ".")
    else:
      stage = part
  if tasks is not None and task not in tasks:
    raise ValueError(f"config argument task={task!r}: expected "
                     + " or ".join(repr(t) for t in tasks) + ".")
  return stage, task, given


def _section(fields: dict, overrides: dict) -> ml_collections.ConfigDict:
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise KeyError(f"unknown fields {unknown}; the section has {sorted(fields)}.")
  return ml_collections.ConfigDict({**fields, **overrides})


def sampling(**overrides) -> ml_collections.ConfigDict:
  """The policy's sampling in every stage (pass@1, labels, verifier eval, search)."""
  return _section(dict(
      temperature=1.0,  # sampling temperature (> 0: every stage draws several samples)
      top_p=1.0,  # nucleus sampling: keep the most likely tokens up to this mass (1: off)
      max_new_tokens=96,  # cap on a solution's tokens; the longest reference must fit
      batch_size=512,  # rows per sampling call (speed only: results do not depend on it)
      # Continuous batching (speed only: the same tokens): batch_size slots refilled every
      # `segment` decode steps as their rows end, where many independent answers are
      # sampled (ttc_jax.sampling.serving); 0: static batches, each run to its longest row.
      # On 2 CPU cores (AMD EPYC) segment=8 raised the decode utilization of the difficulty
      # samples from 0.610 to 0.886 but not their speed (34 s against 35 s; all rows of
      # one cache read up to the longest live row), and compiles 5x the programs: off. The
      # revision chains' queue runs across steps (128 slots: utilization 0.90 against 0.60 of
      # their static steps) but took 65 s against 38 s for the revision sweep's chains of
      # 200 problems: their prompts are 14 to 430 tokens, and every slot pays the widest; with
      # batch_size=512 slots, 0.44 and 111 s (the long chains' last answers leave most slots
      # with nothing ready).
      # Static batches shrink instead as their rows end (SamplingCore.sample's shrink: the
      # same tokens; difficulty at 06f4741: utilization 0.944, 13.4 s against 19-23 s).
      segment=0,
  ), overrides)


def difficulty(**overrides) -> ml_collections.ConfigDict:
  return _section(dict(
      samples_per_problem=64,  # policy samples per test problem (pass@1, oracle bins)
  ), overrides)


def verifier_eval(**overrides) -> ml_collections.ConfigDict:
  return _section(dict(
      # Rows per full forward pass of a verifier or of the policy's likelihood over finished
      # samples (speed only; None: sampling.batch_size; memory: one layer's rows x heads x
      # length^2 attention scores).
      batch_size=config_dict.placeholder(int),
      subsamples=256,  # random N-subsets per problem for each best-of-N accuracy
      auc_problems=100,  # held-out test problems (after test_problems) for the step AUC
      auc_samples_per_problem=2,  # their policy samples
      rollouts=16,  # MC rollouts per step prefix of those samples
  ), overrides)


def search(**overrides) -> ml_collections.ConfigDict:
  """The search sweep: every method at every budget, each cell with its own random streams."""
  return _section(dict(
      budgets=(1, 4, 16),  # generation budgets N
      seeds=(0, 1),  # independent repeats of every search cell (own random streams)
      # Methods, each at every budget: best_of_n (PRM-weighted), beam (M = beam_width),
      # beam_sqrt (M = sqrt(N)), dvts (subtrees of width beam_width), particles
      # (particle filtering), lookahead (beam with k-step rollouts, k in lookahead_steps).
      methods=("best_of_n", "beam", "dvts", "particles", "lookahead"),
      beam_width=4,  # M of beam search, DVTS and lookahead
      particle_temperature=1.0,  # particle filtering: resample by softmax(logit(score) / T)
      # alpha of beam search and lookahead: rows ranked by Q + alpha x A, A = Q(s_h) -
      # Q(s_{h-1}) the step's process advantage (Setlur et al., arXiv 2410.08146); 0: by Q.
      advantage=0.0,
      # k of the lookahead searches (beam width M = beam_width); a lookahead cell costs
      # N x (k + 1) generations.
      lookahead_steps=(3,),
      max_rounds=40,  # beam search rounds (steps per solution)
      max_step_tokens=24,  # cap on one step's tokens
      rows_per_call=512,  # problems x N per search call (speed only)
      # What scores the steps: 'prm' (the study's PRM, trained or imported) or the policy's
      # confidence in its own tokens, 'policy_likelihood' or conf_<token>_<aggregation>
      # (ttc_jax.verifiers.confidence: no model call, 0 verifier FLOPs).
      verifier="prm",
  ), overrides)


def compute_optimal(**overrides) -> ml_collections.ConfigDict:
  """Compute-optimal scaling (paper sections 3, 5.3, 6.3): per difficulty bin and budget, the
  candidate (every search and revision cell) best on one fold of problems, applied to the
  other; oracle bins and bins predicted from the verifier alone."""
  return _section(dict(
      folds=2,  # cross-validation folds over problems (the paper: 2)
      repeats=25,  # random fold splits, each problem's outcome averaged over them
      predictor="prm_last",  # the verifier score averaged per problem for predicted bins
      predictor_samples=config_dict.placeholder(int),  # None: all the difficulty samples
      r_values=(0.16, 0.79, 22.0),  # the exchange's D_inference / D_pretrain (paper section 7)
  ), overrides)


def verifier_choice(**overrides) -> ml_collections.ConfigDict:
  """The search verifier chosen by within-problem AUC on held-out train problems (never test
  problems): the study says which one its claims used and which one this picks."""
  return _section(dict(
      # The first held-out train problem (>= mc_labels.num_problems: after every problem a
      # verifier trains on; experiments/arith.py: right after the MC-labelled ones).
      first_problem=config_dict.placeholder(int),
      num_problems=200,  # held-out train problems
      samples_per_problem=16,  # policy samples per problem
      # Ensembles fitted here (ttc_jax.verifiers.ensemble): each base verifier ('prm', the
      # LM-head verifiers; 'conf': none) with the confidence measures below, by a logistic
      # regression on these problems' samples; ranked by cross-validation over them.
      ensembles=("conf", "prm", "implicit_prm", "dpo", "sft_lm"),
      ensemble_confidence=("conf_logprob_mean", "policy_likelihood"),
      ensemble_folds=5,
  ), overrides)


def allocation(**overrides) -> ml_collections.ConfigDict:
  """Adaptive allocation (beyond the paper): best-of-N in rounds over one budget shared by the
  problems, its parameters chosen per budget on held-out train problems."""
  return _section(dict(
      # The score that weighs the votes and decides: 'chosen' (the verifier verifier_choice
      # picked on train problems) or a score name (e.g. 'policy_likelihood').
      verifier="chosen",
      selection="weighted",  # 'weighted' (best-of-N weighted's vote) or 'majority'
      # Average generations per problem (each at most difficulty.samples_per_problem, the pool
      # every problem's samples are drawn from in order).
      budgets=(1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32),
      # Held-out train problems the parameters are chosen on (None: right after the verifier
      # choice's; never a problem a verifier was trained on).
      first_problem=config_dict.placeholder(int),
      num_problems=200,
  ), overrides)


def distill(**overrides) -> ml_collections.ConfigDict:
  """Distilling test-time compute into the policy (``make distill``; beyond the paper)."""
  return _section(dict(
      rounds=2,  # rounds of sample -> select -> fine-tune, each from the last round's model
      # Train problems (None: right after the LM-head verifiers' samples, after every other
      # stage's train problems).
      first_problem=config_dict.placeholder(int),
      num_problems=2000,
      samples_per_problem=8,  # N of the best-of-N weighted selection on each train problem
      # The score of the selection: the current model's own confidence (no training, no label).
      verifier="conf_logprob_mean",
      variants=("selected", "labelled"),  # label-free; the labelled reference
      policy_rows=0.25,  # share of the rows that are the policy's own SFT rows
      eval_samples=16,  # samples per test problem for each round's evaluation
      eval_n=(4, 16),  # best-of-N weighted and majority at these N
      problems_per_shard=500,  # resumable unit of the sampling
      # The larger policy's architecture (large_policy) trained from scratch to the FLOPs of
      # the policy's pretraining plus the label-free rounds, evaluated beside them (paired).
      matched_large_policy=True,
  ), overrides)


def hybrid(**overrides) -> ml_collections.ConfigDict:
  """Search then revise (beyond the paper): the search's best candidate revised by the
  revision model; cells that join compute-optimal selection's candidates."""
  return _section(dict(
      methods=("beam",),  # search families (search.methods' names; beam: search.beam_width)
      budgets=(4,),  # search budgets S (generations)
      revisions=(1, 2, 4),  # revisions L after the search: a cell per L (budget S + L)
      seed=0,  # the search seed: the search sweep's own cells of that seed
  ), overrides)


def verifier_axis(**overrides) -> ml_collections.ConfigDict:
  """Verifier quality as a controlled axis (`make verifier-axis`; diagnosis, not a claim): the
  search methods against a synthetic verifier (the task's step checker through calibrated
  noise) at each target within-problem AUC."""
  return _section(dict(
      aucs=(0.6, 0.7, 0.8, 0.9, 0.97),  # target within-problem AUCs (reached on train problems)
      calibration_problems=100,  # train problems whose samples calibrate the noise
      samples_per_problem=16,  # samples per calibration problem
      methods=("best_of_n", "beam", "dvts", "particles"),  # best_of_n and tree searches
      budgets=(4, 16),  # generation budgets (of search.budgets)
      seeds=(0,),  # search seeds per cell
  ), overrides)


def report(**overrides) -> ml_collections.ConfigDict:
  return _section(dict(
      difficulty_bins=5,  # oracle difficulty quantile bins (the paper's 5 levels)
  ), overrides)
