"""Adaptive allocation (beyond the paper: its first open direction, "cheap, dynamic difficulty
assessment"): best-of-N in rounds with one budget shared by the problems, its parameters chosen
on train problems, measured on the test problems against best-of-N weighted and majority on
the same samples (:mod:`ttc_jax.search.adaptive`)."""

from __future__ import annotations

import ml_collections
import numpy as np

from ttc_jax import accounting
from ttc_jax.analysis import claims as claims_lib
from ttc_jax.analysis import difficulty as difficulty_lib
from ttc_jax.analysis import efficiency as efficiency_lib
from ttc_jax.analysis import stats as stats_lib
from ttc_jax.pipeline import artifacts
from ttc_jax.pipeline import config as config_lib
from ttc_jax.pipeline.config import ConfigError
from ttc_jax.pipeline.config import Facts
from ttc_jax.pipeline.config import check_int
from ttc_jax.pipeline.stage import Context
from ttc_jax.pipeline.stage import Stage
from ttc_jax.pipeline.stage import load_json
from ttc_jax.pipeline.stage import segment
from ttc_jax.pipeline.stages import common
from ttc_jax.pipeline.stages.verifier_eval import score_samples
from ttc_jax.sampling import solutions
from ttc_jax.search import adaptive
from ttc_jax.search.records import CurvePoint
from ttc_jax.verifiers import names

CHOSEN = "chosen"  # allocation.verifier: the one verifier_choice picked on train problems


def verifier_name(ctx: Context) -> str:
  """The score the allocation weighs votes by: ``allocation.verifier``, or the verifier chosen
  on held-out train problems."""
  v = ctx.config.allocation.verifier
  return ctx.inputs["verifier_choice"]["chosen"] if v == CHOSEN else v


def _flops(policy_cost, verifier_cost, prompts: np.ndarray, lengths: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
  """FLOPs of each problem's prompt (once) and of each of its samples (continuing the
  prompt's cache), by the policy and by the verifier reading them (None: the policy's
  confidence, which comes with the samples: 0)."""
  stop = prompts[:, None] + lengths
  per_prompt = accounting.forward_flops(policy_cost, 0, prompts)
  per_sample = accounting.forward_flops(policy_cost, np.broadcast_to(prompts[:, None], stop.shape),
                                        stop)
  if verifier_cost is not None:
    per_prompt = per_prompt + accounting.forward_flops(verifier_cost, 0, prompts)
    per_sample = per_sample + accounting.forward_flops(
        verifier_cost, np.broadcast_to(prompts[:, None], stop.shape), stop)
  return np.asarray(per_prompt, np.float64), np.asarray(per_sample, np.float64)


def _point(method: str, params: dict, budget: float, per_problem: np.ndarray, counts: np.ndarray,
           flops: tuple[np.ndarray, np.ndarray], bins: np.ndarray, num_bins: int,
           seed: int) -> CurvePoint:
  per_prompt, per_sample = flops
  used = np.arange(per_sample.shape[1])[None] < counts[:, None]
  by_problem = per_prompt + (per_sample * used).sum(axis=1)
  est = stats_lib.mean_ci(per_problem, seed=seed)
  acc_bin, ci_bin = [], []
  for b in range(num_bins):
    sel = per_problem[bins == b]
    if sel.size:
      e = stats_lib.mean_ci(sel, seed=seed)
      acc_bin.append(float(e.mean))
      ci_bin.append([float(e.low), float(e.high)])
    else:
      acc_bin.append(float("nan"))
      ci_bin.append([float("nan"), float("nan")])
  return CurvePoint(method=method, params=dict(params), budget_generations=float(budget),
                    accuracy=float(est.mean), ci=[float(est.low), float(est.high)],
                    accuracy_by_bin=acc_bin, ci_by_bin=ci_bin,
                    per_problem=[float(x) for x in per_problem],
                    flops=float(by_problem.sum()),
                    flops_by_problem=[float(x) for x in by_problem])


def run_allocation(ctx: Context) -> dict:
  """The allocation's parameters chosen at each budget on the policy's samples of held-out
  train problems, applied to the test problems' difficulty samples (scored by the same
  verifier in verifier_eval); best-of-N weighted and majority on the first N of the same
  samples; efficiency and the pre-specified claims."""
  c = ctx.config
  ac = c.allocation
  verifier = verifier_name(ctx)
  pol = ctx.sampler()
  tok, task = pol.tokenizer, pol.task
  data = ctx.inputs["data"]
  first = first_problem(c)
  train = data.problems("train", ac.num_problems, start=first)
  leaked = [p.uid for p in train if p.split != "train"]
  if leaked:
    raise artifacts.ArtifactError(f"adaptive allocation: {leaked[0]} is not a train problem "
                                  "(its parameters are never chosen on test problems).")
  diff = ctx.inputs["difficulty"]
  pool = diff.n
  tr = solutions.sample_problems(pol.core, tok, task, train, pool, c.seed, "allocation_samples",
                                 pol.sp, batch_size=c.sampling.batch_size, segment=segment(c),
                                 log_fn=ctx.log)
  tr_scores = score_samples(ctx, tr, only=(verifier,))[verifier].reshape(len(train), pool)
  tr_ids = adaptive.pool_ids([tr.answers[i * pool:(i + 1) * pool] for i in range(len(train))])
  tr_correct = tr.correct_matrix()

  test = data.problems("test", c.test_problems)
  te = diff.samples(tok, task, test)
  scored = ctx.inputs["verifier_eval"]["scored"]
  if verifier not in scored:
    raise artifacts.ArtifactError(f"allocation.verifier={verifier!r}: the verifier evaluation "
                                  f"scored {sorted(k for k in scored if names.model_of(k))}.")
  te_scores = np.asarray(scored[verifier], np.float64).reshape(len(test), pool)
  te_ids = adaptive.pool_ids([te.answers[i * pool:(i + 1) * pool] for i in range(len(test))])
  te_correct = te.correct_matrix()

  model = names.charged_model(verifier)
  pol_cost = accounting.ModelCost.from_config(ctx.inputs["policy"].config)
  ver_cost = None if model == names.POLICY else (
      pol_cost if model in names.LM_VERIFIERS
      else accounting.ModelCost.from_config(ctx.inputs[model].config))
  prompts = np.asarray([len(x) for x in te.prompts], np.int64)
  lengths = np.asarray(te.gens.lengths, np.int64).reshape(len(test), pool)
  flops = _flops(pol_cost, ver_cost, prompts, lengths)
  num_bins = c.report.difficulty_bins
  # compute_optimal's oracle bins: the same samples' pass@1.
  bins = difficulty_lib.oracle_bins(te_correct.mean(axis=1), num_bins)

  rows, adaptive_points, nominal_points = [], [], []
  for budget in ac.budgets:
    choice = adaptive.choose(budget, tr_ids, tr_scores, tr_correct, ac.selection)
    alloc = adaptive.allocate(choice.strategy, te_ids, te_scores)
    out = adaptive.outcomes(alloc, te_ids, te_correct)
    params = {"budget": budget, **choice.strategy.params(), "verifier": verifier}
    adaptive_points.append(_point(f"adaptive_{ac.selection}", params, alloc.generations, out,
                                  alloc.counts, flops, bins, num_bins, c.seed))
    nominal_points.append(_point(f"adaptive_{ac.selection}",
                                 {**params, "generations": alloc.generations}, float(budget), out,
                                 alloc.counts, flops, bins, num_bins, c.seed))
    rows.append({"budget": budget, "strategy": choice.strategy.params(),
                 "train_accuracy": choice.train_accuracy,
                 "train_generations": choice.train_generations, "tried": choice.tried,
                 "generations": alloc.generations, "rounds": alloc.rounds,
                 "settled": float(alloc.settled.mean()), "hopeless": float(alloc.hopeless.mean()),
                 "max_samples": int(alloc.counts.max()),
                 "samples_by_bin": [float(alloc.counts[bins == b].mean()) if (bins == b).any()
                                    else float("nan") for b in range(num_bins)]})
  baselines = {}
  for sel, label in (("weighted", "best_of_n_weighted"), ("majority", "majority")):
    pts = []
    for n in _powers_of_two(pool):
      strat = adaptive.best_of_n(n, sel)
      alloc = adaptive.allocate(strat, te_ids, te_scores)
      pts.append(_point(label, {"n": n, "verifier": verifier}, n,
                        adaptive.outcomes(alloc, te_ids, te_correct), alloc.counts, flops, bins,
                        num_bins, c.seed))
    baselines[label] = pts
  for r, a in zip(rows, nominal_points):
    bon = next((p for p in baselines["best_of_n_weighted"] if p.budget_generations == r["budget"]),
               None)
    r["vs_best_of_n"] = None if bon is None else stats_lib.paired_diff(
        a.per_problem, bon.per_problem, names=("adaptive", "best_of_n_weighted"),
        seed=c.seed).to_json()
  eff = efficiency_lib.efficiency(adaptive_points, baselines["best_of_n_weighted"], c.seed,
                                  baseline="best-of-N weighted")
  claims = _claims(nominal_points, baselines, eff, c.seed)
  result = {
      "verifier": verifier, "selection": ac.selection, "pool": pool,
      "train": {"problems": [p.uid for p in train], "first_problem": first,
                "pass_at_1": float(tr_correct.mean())},
      "test_problems": len(test), "choices": rows, "grid": adaptive.GRID,
      "adaptive": [p.to_json() for p in adaptive_points],
      "adaptive_nominal": [p.to_json() for p in nominal_points],
      "baselines": {k: [p.to_json() for p in v] for k, v in baselines.items()},
      "efficiency": eff, "claims": claims,
      "doc": "Adaptive allocation: best-of-N in rounds over one budget shared by the test "
             "problems; each budget's parameters chosen on held-out train problems; every "
             "sample is the difficulty stage's sample of that problem and index, so best-of-N "
             "and majority read the first N of the same samples (paired)."}
  ctx.out.write_json("allocation.json", result)
  for r in rows:
    ctx.log(f"adaptive @{r['budget']:g}: {r['generations']:.2f} generations/problem, "
            f"params {r['strategy']} (train accuracy {r['train_accuracy']:.3f})")
  return {"budgets": list(ac.budgets), "claims": len(claims),
          "accuracy": [p.accuracy for p in adaptive_points]}


def _powers_of_two(n: int) -> list[int]:
  out, k = [], 1
  while k <= n:
    out.append(k)
    k *= 2
  return out


def _claims(nominal: list[CurvePoint], baselines: dict, eff: dict, seed: int) -> list[dict]:
  """Pre-specified: adaptive allocation beats best-of-N weighted and majority at the same
  budget (it spends at most that), at 4 and at 16; and it reaches best-of-N weighted's
  accuracy with at most half the generations (the best ratio over best-of-N's budgets, its
  interval's lower end >= 2)."""
  out = []
  for n in (4, 16):
    a = next((p for p in nominal if p.budget_generations == n), None)
    for key, label in (("best_of_n_weighted", "best-of-N weighted"), ("majority", "majority")):
      b = next((p for p in baselines[key] if p.budget_generations == n), None)
      if a is None or b is None:
        continue
      cmp = stats_lib.paired_diff(a.per_problem, b.per_problem,
                                  names=(f"adaptive@{n}", f"{key}@{n}"), seed=seed)
      out.append(claims_lib.claim(
          f"(f) adaptive allocation over {label} at budget {n}",
          "beyond the paper: allocating samples as they arrive beats a fixed N per problem at "
          "the same total budget", cmp, budget=n))
  out.append(efficiency_lib.efficiency_claim(
      eff, "adaptive allocation", "beyond the paper: adaptive allocation", "best-of-N weighted",
      threshold=2.0))
  out[-1].update(
      claim="(f) adaptive allocation: best-of-N weighted's accuracy with at most half the "
            "generations",
      paper="beyond the paper: assessing difficulty from the samples as they arrive saves "
            "generations (the best ratio over best-of-N's budgets; its 95% CI's lower end >= 2)")
  return out


def first_problem(c: ml_collections.ConfigDict) -> int:
  """The first held-out train problem: ``allocation.first_problem``, or right after the verifier
  choice's problems (after the MC-labelled ones when it has no first problem)."""
  return common.allocation_first_problem(c)


def check_allocation(c: ml_collections.ConfigDict, known: Facts) -> None:
  ac = c.allocation
  check_int(ac.num_problems, "allocation.num_problems", 1)
  if ac.first_problem is not None:
    check_int(ac.first_problem, "allocation.first_problem", 0)
  first = first_problem(c)
  common.check_train_range(first, ac.num_problems, known, "allocation")
  # Never a problem a verifier was trained on (its scores there would be too good).
  used = [("mc_labels", 0, c.mc_labels.num_problems)]
  vs = c.get("verifier_samples")
  if vs is not None and any(config_lib.filled_by(c, m) is not None
                            for m in (names.IMPLICIT_PRM, names.DPO)):
    used.append(("verifier_samples", vs.first_problem, vs.first_problem + vs.num_problems))
  sl = c.get("sft_lm")
  if sl is not None and config_lib.filled_by(c, names.SFT_LM) is not None:
    used.append(("sft_lm", sl.first_problem, sl.first_problem + sl.num_problems))
  lo, hi = first, first + ac.num_problems
  for what, a, b in used:
    if lo < b and a < hi:
      raise ConfigError(f"allocation: train problems {lo}..{hi - 1} overlap {what}'s {a}.."
                        f"{b - 1} (a verifier trained on them); expected a range outside it.")
  pool = c.difficulty.samples_per_problem
  budgets = list(ac.budgets)
  if not budgets or any(isinstance(b, bool) or not isinstance(b, (int, float))
                        or not 1 <= b <= pool for b in budgets):
    raise ConfigError(f"allocation.budgets={ac.budgets!r}: expected generations per problem "
                      f"in [1, {pool}] (difficulty.samples_per_problem: the pool).")
  if ac.selection not in adaptive.SELECTIONS:
    raise ConfigError(f"allocation.selection={ac.selection!r}: expected one of "
                      f"{adaptive.SELECTIONS}.")
  if ac.verifier != CHOSEN:
    if ac.verifier not in names.SCORES:
      raise ConfigError(f"allocation.verifier={ac.verifier!r}: expected {CHOSEN!r} or a score "
                        f"the verifier evaluation computes, one of {list(names.SCORES)}.")
    common.check_score(c, ac.verifier, "allocation.verifier")
  elif config_lib.filled_by(c, "verifier_choice") is None:
    raise ConfigError(f"allocation.verifier={CHOSEN!r}: this experiment has no verifier choice "
                      "(stages.verifier_choice=None); name a verifier, e.g. "
                      f"'{names.LIKELIHOOD}'.")


def _reads(c: ml_collections.ConfigDict, role: str) -> bool:
  """The trained verifiers are read only when ``allocation.verifier`` names one, the verifier
  choice only when it is 'chosen' (which may name any of them)."""
  v = c.allocation.verifier
  if role == "verifier_choice":
    return v == CHOSEN
  if role in (names.PRM, names.ORM) + names.LM_VERIFIERS:
    return v == CHOSEN or names.model_of(v) == role
  return True


ALLOCATION = Stage(
    name="allocation", doc="adaptive allocation: best-of-N in rounds over a shared budget, "
    "chosen on train problems, against best-of-N and majority on the same test samples",
    inputs=("data", "policy", "difficulty", "verifier_eval", "verifier_choice", "prm", "orm",
            "implicit_prm", "dpo", "sft_lm"),
    sections=("seed", "sampling", "test_problems", "difficulty", "report", "mc_labels",
              "verifier_choice", "allocation"),
    outputs=("allocation.json",), run=run_allocation, load=load_json("allocation.json"),
    may_lack=("verifier_choice", "prm", "orm", "implicit_prm", "dpo", "sft_lm"), reads=_reads,
    cost_s=55,
    checks={"allocation": check_allocation})
