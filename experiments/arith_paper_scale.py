r"""The embedded study at the paper's scale: 500 test problems (MATH-500's size), every
budget 1..64, every search method (beam M=4 and M=sqrt(N), lookahead k=1 and 3, DVTS,
particle filtering), 3 search seeds; revision chains for budgets up to 64 from 64 answers per
train problem.

Command (resumable; shares nothing with ``make study``'s workdir unless pointed at it):

  python launch/run.py --config=experiments/arith_paper_scale.py --workdir=runs/arith_paper

Runtime: several hours on 2 CPU cores (the search sweep is about 10x the default
study's: 2.5x the problems, 3x the budgets and methods); not measured end to end yet.
Expected result: the same verifier and the same findings as ``make study``
(experiments/arith.py), with confidence intervals about 1.6x narrower.
"""

import importlib.util
import os

import ml_collections


def _arith():
  """experiments/arith.py, loaded by path (a config file is not in a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "arith.py")
  spec = importlib.util.spec_from_file_location("ttc_jax_experiments_arith", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """experiments/arith.py's config at the paper's scale (``arg`` as there)."""
  c = _arith().get_config(arg)
  c.task.num_test = 700  # 500 searched + the verifier evaluation's 100 held-out problems
  c.test_problems = 500
  c.search.budgets = (1, 2, 4, 8, 16, 32, 64)
  c.search.methods = ("best_of_n", "beam", "beam_sqrt", "dvts", "particles", "lookahead")
  c.search.lookahead_steps = (1, 3)
  c.search.seeds = (0, 1, 2)
  # The paper's MC recipe: 16 samples per problem, 16 rollouts per step prefix (Snell et al.,
  # appendix: the PRM's training data), on 800 train problems: about 5x the MC rollouts of
  # make study's 2400 x 4 x 4 (many problems with few rollouts, which gave the higher AUC at
  # equal cost: that recipe is an ablation row below).
  c.mc_labels.num_problems = 800
  c.mc_labels.samples_per_problem = 16
  c.mc_labels.rollouts = 16
  c.mc_labels.problems_per_shard = 100
  # ... and its early stopping: 10% of those train questions held out, the PRM the checkpoint
  # with the lowest loss on their samples (one every 100 of its 800 steps).
  c.prm.holdout = 0.1
  # The verifier choice's held-out train problems after the MC problems of every ablation
  # variant (3200 below): no verifier it ranks, nor a variant, trained on them.
  c.verifier_choice.first_problem = 3200
  # The LM-head verifiers' samples after the verifier choice's 200: 16000 x 8.
  c.verifier_samples.first_problem = 4000
  c.verifier_samples.num_problems = 16000
  # The likelihood verifier's SFT after the verifier choice's and allocation's (3200..3599).
  c.sft_lm.first_problem = 3600
  c.sft_lm.num_problems = 16400
  # That leaves no train problem after them: distillation (which trains no verifier) takes the
  # first 2000 (every train problem was in the policy's SFT data anyway).
  c.distill.first_problem = 0
  # Revisions as in the paper: 64 answers per train problem for the trajectories, budgets
  # up to 64 (chains of up to 64 revisions; 256 answers per problem and seed).
  c.revision_data.samples_per_problem = 64
  c.revisions.budgets = (1, 2, 4, 8, 16, 32, 64)
  c.revisions.seeds = (0, 1, 2)
  c.ablation.variants = tuple(c.ablation.variants) + (  # (hard and oracle labels: arith's)
      "prm.label_positions=every_token",
      "prm.model.num_layers=4", "prm.init=scratch", "prm.train.steps=2400", "prm.holdout=0.0",
      "mc_labels.num_problems=3200,mc_labels.samples_per_problem=4,mc_labels.rollouts=4,"
      "mc_labels.problems_per_shard=400")
  return c
