"""Difficulty (paper section 3.2): pass@1 of each test problem from the policy's samples, the
oracle difficulty bins."""

from __future__ import annotations


import ml_collections
import numpy as np

from ttc_jax.analysis import difficulty as difficulty_lib
from ttc_jax.pipeline import artifacts
from ttc_jax.pipeline.config import Facts
from ttc_jax.pipeline.config import check_int
from ttc_jax.pipeline.stage import Context
from ttc_jax.pipeline.stage import Stage
from ttc_jax.pipeline.stage import segment
from ttc_jax.report import figures
from ttc_jax.sampling import solutions
from ttc_jax.verifiers import aggregation


def run_difficulty(ctx: Context) -> dict:
  c, pol = ctx.config, ctx.sampler()
  task = pol.task
  probs = ctx.inputs["data"].problems("test", c.test_problems)
  n = c.difficulty.samples_per_problem
  samples = solutions.sample_problems(pol.core, pol.tokenizer, task, probs, n, c.seed,
                                      "pass_at_1", pol.sp, batch_size=c.sampling.batch_size,
                                      segment=segment(c))
  p1 = samples.correct_matrix().mean(axis=1)
  summary = difficulty_lib.pass_at_1_summary(p1, [p.difficulty for p in probs])
  answers = [samples.answers[i * n:(i + 1) * n] for i in range(len(probs))]
  summary[f"majority_at_{n}"] = aggregation.accuracy_curves(
      answers, [task.normalize_answer(p.answer) for p in probs], None, [n], ["majority"], 1,
      c.seed)["majority"][0]
  ctx.out.save_npz("samples.npz", {"tokens": samples.gens.tokens,
                                   "lengths": samples.gens.lengths,
                                   "stopped": samples.gens.stopped,
                                   "samples_per_problem": np.array(n)})
  ctx.out.write_json("pass_at_1.json", {
      "summary": summary,
      "problems": [{"index": p.index, "uid": p.uid, "difficulty": p.difficulty,
                    "meta": dict(p.meta), "pass_at_1": float(v)} for p, v in zip(probs, p1)]})
  ctx.out.save_figure("pass_at_1.png", figures.pass_at_1(p1, [p.difficulty for p in probs],
                                                         task.difficulty_label))
  ctx.log(f"pass@1 on {len(probs)} test problems ({n} samples each): mean {summary['mean']:.3f}, "
          f">=0.7: {100 * summary['frac_ge_0.7']:.0f}%, <=0.2: {100 * summary['frac_le_0.2']:.0f}%; "
          f"majority@{n} {summary[f'majority_at_{n}']:.3f}")
  return summary


def load_difficulty(out: artifacts.StageDir, key: dict) -> difficulty_lib.Difficulty:
  del key
  record = out.read_json("pass_at_1.json")
  z = out.load_npz("samples.npz")
  return difficulty_lib.Difficulty(pass_at_1=np.array([p["pass_at_1"] for p in record["problems"]]),
                    record=record,
                    gens=solutions.Generations(tokens=z["tokens"], lengths=z["lengths"],
                                               stopped=z["stopped"]),
                    n=int(z["samples_per_problem"]))


# ----------------------------------------------------------------------------
# the larger policy (pretraining vs test-time FLOPs, paper section 7)


def check_difficulty(c: ml_collections.ConfigDict, known: Facts) -> None:
  del known
  check_int(c.difficulty.samples_per_problem, "difficulty.samples_per_problem", 1)

DIFFICULTY = Stage(
    name="difficulty", doc="pass@1 per test problem from the policy's samples (oracle bins)",
    inputs=("data", "policy"), sections=("seed", "sampling", "test_problems", "difficulty"),
    outputs=("pass_at_1.json", "samples.npz", "pass_at_1.png"),
    run=run_difficulty, load=load_difficulty, version=2, cost_s=30,
    checks={"difficulty": check_difficulty})
