"""The pretraining / test-time FLOPs exchange (paper section 7): the larger policy's greedy
pass@1 and majority curve on the test problems."""

from __future__ import annotations

import ml_collections
import numpy as np

from ttc_jax.analysis import verifiers as verifier_metrics
from ttc_jax.pipeline.config import Facts
from ttc_jax.pipeline.config import check_int
from ttc_jax.pipeline.stage import Context
from ttc_jax.pipeline.stage import Stage
from ttc_jax.pipeline.stage import load_json
from ttc_jax.pipeline.stage import sampling_params
from ttc_jax.pipeline.stage import segment
from ttc_jax.sampling import solutions
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.verifiers import aggregation


def run_large_policy_eval(ctx: Context) -> dict:
  """The larger policy on the study's test problems: greedy pass@1 (the paper's Figure 9
  reference) and ``exchange.samples_per_problem`` samples for its majority curve."""
  c = ctx.config
  data, large = ctx.inputs["data"], ctx.inputs["large_policy"]
  tok, task = large.tokenizer, data.task
  probs = data.problems("test", c.test_problems)
  core, bs = large.sampling_core(), c.sampling.batch_size
  greedy_sp = SamplingParams(temperature=0.0, max_new_tokens=c.sampling.max_new_tokens)
  greedy = solutions.sample_problems(core, tok, task, probs, 1, c.seed, "large_policy_samples",
                                     greedy_sp, batch_size=bs, segment=segment(c),
                                     log_fn=ctx.log)
  n = c.exchange.samples_per_problem
  samples = solutions.sample_problems(core, tok, task, probs, n, c.seed, "large_policy_samples",
                                      sampling_params(c), batch_size=bs, segment=segment(c),
                                      log_fn=ctx.log)
  truths = [task.normalize_answer(p.answer) for p in probs]
  ns = verifier_metrics.powers_of_two(n)
  answers = [samples.answers[i * n:(i + 1) * n] for i in range(len(probs))]
  majority = aggregation.per_problem_accuracy(answers, truths, None, ns, ["majority"],
                                              c.exchange.subsamples, c.seed)["majority"]
  sampled = np.asarray(samples.gens.lengths, np.int64).reshape(len(probs), n)
  result = {
      "params": large.config.num_params(),
      "model": large.summary(),
      "train_tokens": large.description.get("made_by", {}).get("data", {}).get("train_tokens"),
      "problems": [p.uid for p in probs],
      "greedy_correct": [int(x) for x in greedy.correct],
      "greedy_pass_at_1": float(np.mean(greedy.correct)),
      "sampled_pass_at_1": [float(x) for x in samples.correct_matrix().mean(axis=1)],
      "majority": {"n": ns, "per_problem": [[float(x) for x in row] for row in majority],
                   "accuracy": [float(row.mean()) for row in majority]},
      "samples_per_problem": n,
      "prompt_tokens": [len(x) for x in greedy.prompts],
      "greedy_tokens": [int(x) for x in greedy.gens.lengths],
      "sample_tokens_mean": float(sampled.mean()),
  }
  ctx.out.write_json("large_policy_eval.json", result)
  ctx.log(f"large policy ({result['params']:,} params): greedy pass@1 "
          f"{result['greedy_pass_at_1']:.3f}, sampled pass@1 "
          f"{np.mean(result['sampled_pass_at_1']):.3f}, majority@{ns[-1]} "
          f"{result['majority']['accuracy'][-1]:.3f}")
  return {k: result[k] for k in ("params", "greedy_pass_at_1")}


# ----------------------------------------------------------------------------
# MC labels, PRM, ORM


def check_exchange(c: ml_collections.ConfigDict, known: Facts) -> None:
  del known
  check_int(c.exchange.samples_per_problem, "exchange.samples_per_problem", 1)
  check_int(c.exchange.subsamples, "exchange.subsamples", 1)

LARGE_POLICY_EVAL = Stage(
    name="large_policy_eval", doc="the larger policy's greedy pass@1 and majority curve on the "
    "test problems",
    inputs=("data", "large_policy"), sections=("seed", "sampling", "test_problems", "exchange"),
    outputs=("large_policy_eval.json",),
    run=run_large_policy_eval, load=load_json("large_policy_eval.json"), cost_s=300,
    checks={"exchange": check_exchange})
