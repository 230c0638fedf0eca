"""Verifier quality as a controlled axis (diagnosis, not a claim of the study): the search
methods against a synthetic verifier of calibrated within-problem AUC.

At each target AUC the synthetic verifier (:mod:`ttc_jax.verifiers.synthetic`: the task's step
checker through noise) gets the separation that reaches the target on train problems' samples;
its AUC on the test problems' difficulty samples is measured. Best-of-N weighted, beam search,
DVTS and particle filtering then run on the test problems at each level, charged the FLOPs of
a PRM of the policy's size. Each method's accuracy minus best-of-N's at equal generations,
with a paired interval, shows at which verifier quality tree search starts to pay (Chen et al.,
arXiv 2402.10890, put it at about 90% discriminator accuracy).

`make verifier-axis` runs it (resumable, cell by cell); a task without a step checker skips it.
"""

from __future__ import annotations

import time

import ml_collections
import numpy as np

from ttc_jax.analysis import difficulty as difficulty_lib
from ttc_jax.analysis import stats as stats_lib
from ttc_jax.analysis import verifiers as verifier_metrics
from ttc_jax.pipeline.config import ConfigError
from ttc_jax.pipeline.config import Facts
from ttc_jax.pipeline.config import check_int
from ttc_jax.pipeline.stage import Context
from ttc_jax.pipeline.stage import Stage
from ttc_jax.pipeline.stage import load_json
from ttc_jax.pipeline.stage import segment
from ttc_jax.pipeline.stages.search import outcome_of
from ttc_jax.progress import Progress
from ttc_jax.report import figures
from ttc_jax.sampling import solutions
from ttc_jax.search import SearchContext
from ttc_jax.search import registry
from ttc_jax.search import search_problems
from ttc_jax.search.records import Cell
from ttc_jax.verifiers.synthetic import SyntheticVerifier

TREE = (registry.BEAM, registry.DVTS_FAMILY, registry.PARTICLES)


def _calibration(ctx: Context, pol, probe: SyntheticVerifier) -> dict:
  """Train problems' samples: soundness by the checker, outcome, noise of each (problems,
  samples)."""
  ac = ctx.config.verifier_axis
  probs = ctx.inputs["data"].problems("train", ac.calibration_problems)
  s = solutions.sample_problems(pol.core, pol.tokenizer, pol.task, probs, ac.samples_per_problem,
                                ctx.config.seed, "axis_samples", pol.sp,
                                batch_size=ctx.config.sampling.batch_size,
                                segment=segment(ctx.config), log_fn=ctx.log)
  rows = [s.gens.row(i) for i in range(len(s.texts))]
  shape = (len(probs), s.n)
  sound = np.asarray([probe.sound(probs[i // s.n], r) for i, r in enumerate(rows)]).reshape(shape)
  noise = np.asarray([probe.noise(probs[i // s.n], r) for i, r in enumerate(rows)]).reshape(shape)
  return {"sound": sound, "correct": s.correct_matrix(), "noise": noise,
          "problems": [p.uid for p in probs]}


def _test_auc(verifier: SyntheticVerifier, samples, tok, seed: int) -> dict:
  """The verifier's within-problem AUC [CI] on the test problems' difficulty samples."""
  rows, ends = samples.rows_and_step_ends(tok)
  m = samples.n
  steps = verifier.solution_step_scores(
      [samples.problems[i // m].question for i in range(len(rows))], rows,
      [len(samples.prompts[i // m]) for i in range(len(rows))], ends, batch_size=1)
  final = np.asarray([s[-1] if len(s) else 0.0 for s in steps]).reshape(-1, m)
  return verifier_metrics.within_problem_auc(final, samples.correct_matrix(), seed=seed)


def run_verifier_axis(ctx: Context) -> dict:
  c = ctx.config
  ac = c.verifier_axis
  pol = ctx.sampler()
  task, tok = pol.task, pol.tokenizer
  if not task.has_step_checker:
    ctx.log(f"verifier axis: task {task.name!r} has no step checker; skipped")
    result = {"skipped": f"task {task.name!r} has no step checker", "levels": []}
    ctx.out.write_json("axis.json", result)
    return result
  test = ctx.inputs["data"].problems("test", c.test_problems)
  train = ctx.inputs["data"].problems("train", ac.calibration_problems)
  # A finished solution is named by its question (test problems win a shared question).
  make = lambda d: SyntheticVerifier(d, task, tok, pol.artifact.config, train + test, c.seed)
  cal = _calibration(ctx, pol, make(0.0))
  samples = ctx.inputs["difficulty"].samples(tok, task, test)
  grid = ml_collections.ConfigDict(dict(c.search))
  grid.update(methods=tuple(ac.methods), budgets=tuple(ac.budgets), seeds=tuple(ac.seeds))
  cells = registry.sweep(grid)
  # Difficulty halves by the oracle's pass@1 (0: the easier half), in the test problems' order.
  halves = difficulty_lib.oracle_bins(ctx.inputs["difficulty"].pass_at_1, 2)
  log = ctx.out.cells("cells.jsonl")
  done = log.read()
  progress = Progress(len(ac.aucs) * len(cells), "axis cells", unit="cells", every_s=0,
                      initial=len(done), log_fn=ctx.log)
  levels = []
  for target in ac.aucs:
    d, train_auc = verifier_metrics.calibrate_separation(target, cal["sound"], cal["correct"],
                                                        cal["noise"])
    verifier = make(d)
    level = {"target": target, "separation": d, "train_auc": train_auc,
             "test_auc": _test_auc(verifier, samples, tok, c.seed), "cells": []}
    for cell in cells:
      key = f"auc={target}/{cell.key}"
      if key not in done:
        sctx = SearchContext(core=pol.core, prm=verifier, task=task, tokenizer=tok, seed=c.seed,
                             run=cell.seed, sp=pol.sp, max_step_tokens=c.search.max_step_tokens)
        t0 = time.time()
        results = search_problems(cell.strategy, sctx, test, rows_per_call=c.search.rows_per_call)
        record = Cell(method=cell.method, params=cell.params, seed=cell.seed,
                      budget_generations=cell.strategy.generations,
                      outcomes=tuple(outcome_of(r) for r in results),
                      wall_s=time.time() - t0)
        log.append([{**record.to_json(), "key": key}])
        done[key] = {**record.to_json(), "key": key}
        progress.update(1, extra=f"AUC {target}: {cell.method} {cell.params} seed {cell.seed}: "
                                 f"acc {record.column('correct').mean():.3f}")
      level["cells"].append(done[key])
    levels.append(_summarise(level, c.seed, halves))
  ctx.out.barrier()
  result = {"levels": levels, "crossover": _crossover(levels),
            "charged": "each level is charged a PRM of the policy's size reading every token",
            "calibration": {"problems": cal["problems"],
                            "samples_per_problem": ac.samples_per_problem,
                            "sound_agrees_with_correct": float(np.mean(cal["sound"]
                                                                       == cal["correct"]))}}
  ctx.out.write_json("axis.json", result)
  ctx.out.write_text("axis.md", _markdown(result))
  ctx.out.save_figure("axis.png", figures.verifier_axis(result))
  for lv in levels:
    ctx.log(f"verifier axis AUC target {lv['target']}: train {lv['train_auc']:.3f}, test "
            f"{lv['test_auc']['mean_auc']:.3f}; " + ", ".join(
                f"{k} {v['diff']:+.3f}" for k, v in lv["minus_best_of_n"].items()))
  return {"levels": len(levels), "crossover": result["crossover"]}


HALVES = ("easier half", "harder half")


def _summarise(level: dict, seed: int, halves: np.ndarray) -> dict:
  """Per (method, budget): accuracy [CI] over problems (mean over seeds) and the paired
  difference to best-of-N weighted at the same budget, over all problems and per difficulty
  half (``halves``: 0 or 1 per problem, the cells' problem order)."""
  by = {}
  for cell in level["cells"]:
    by.setdefault((cell["method"], cell["params"]["n"]), []).append(cell["correct"])
  acc, minus, by_half = {}, {}, {h: {} for h in HALVES}
  for (method, n), runs in sorted(by.items()):
    per = stats_lib.per_problem_mean(runs)
    acc[f"{method}@{n}"] = stats_lib.mean_ci(per, seed=seed).to_json()
    base = by.get((registry.name_of(registry.BEST_OF_N), n))
    if registry.method(method).family in TREE and base is not None:
      ref = stats_lib.per_problem_mean(base)
      minus[f"{method}@{n}"] = stats_lib.paired_diff(
          per, ref, names=(method, "best_of_n_weighted"), seed=seed).to_json()
      for h, name in enumerate(HALVES):
        by_half[name][f"{method}@{n}"] = stats_lib.paired_diff(
            per[halves == h], ref[halves == h], names=(method, "best_of_n_weighted"),
            seed=seed).to_json()
  return {**{k: v for k, v in level.items() if k != "cells"}, "accuracy": acc,
          "minus_best_of_n": minus, "minus_best_of_n_by_half": by_half}


def _crossover(levels: list[dict]) -> dict:
  """Per tree method at its largest budget: the lowest measured test AUC from which it beats
  best-of-N (paired CI above 0) at that level and every higher one, with the interval of AUCs
  it lies in (between the level below and that level); None: no crossover up to the highest."""
  out = {}
  keys = sorted({k for lv in levels for k in lv["minus_best_of_n"]})
  for family in sorted({k.split("@")[0] for k in keys}):
    n = max(int(k.split("@")[1]) for k in keys if k.split("@")[0] == family)
    key = f"{family}@{n}"
    wins = [lv["minus_best_of_n"][key]["ci"][0] > 0 for lv in levels]
    aucs = [lv["test_auc"]["mean_auc"] for lv in levels]
    first = next((i for i in range(len(levels)) if all(wins[i:])), None)
    out[key] = ({"auc": aucs[first], "between": [aucs[first - 1] if first else None, aucs[first]]}
                if first is not None else {"auc": None, "no_crossover_up_to": max(aucs)})
  return out


def _ordered(keys) -> list[str]:
  """'method@N' keys by method, then by budget."""
  return sorted(keys, key=lambda k: (k.split("@")[0], int(k.split("@")[1])))


def _markdown(result: dict) -> str:
  levels = result["levels"]
  keys = _ordered({k for lv in levels for k in lv["accuracy"]})
  lines = ["# Verifier quality as a controlled axis", "",
           "A synthetic verifier (the task's step checker through calibrated noise) at each "
           "target within-problem AUC, calibrated on train problems, measured on the test "
           "problems' samples. Each level is charged the FLOPs of a PRM of the policy's size. "
           "Diagnosis only: no claim of the study rests on it.", "",
           "| target AUC | separation | train AUC | test AUC [95% CI] | " +
           " | ".join(keys) + " |", "|" + "---|" * (4 + len(keys))]
  for lv in levels:
    t = lv["test_auc"]
    lines.append(f"| {lv['target']} | {lv['separation']:.3f} | {lv['train_auc']:.3f} | "
                 f"{t['mean_auc']:.3f} [{t['mean_auc_ci'][0]:.3f}, {t['mean_auc_ci'][1]:.3f}] | "
                 + " | ".join(f"{lv['accuracy'][k]['mean']:.3f}" for k in keys) + " |")
  mk = _ordered({k for lv in levels for k in lv["minus_best_of_n"]})
  lines += ["", "Accuracy minus best-of-N weighted at the same budget (paired 95% CI):", "",
            "| test AUC | " + " | ".join(mk) + " |", "|" + "---|" * (1 + len(mk))]
  for lv in levels:
    lines.append(f"| {lv['test_auc']['mean_auc']:.3f} | " + " | ".join(
        f"{lv['minus_best_of_n'][k]['diff']:+.3f} [{lv['minus_best_of_n'][k]['ci'][0]:+.3f}, "
        f"{lv['minus_best_of_n'][k]['ci'][1]:+.3f}]" for k in mk) + " |")
  for half in HALVES:
    lines += ["", f"The same on the {half} of the test problems (by the oracle's pass@1):", "",
              "| test AUC | " + " | ".join(mk) + " |", "|" + "---|" * (1 + len(mk))]
    for lv in levels:
      d = lv["minus_best_of_n_by_half"][half]
      lines.append(f"| {lv['test_auc']['mean_auc']:.3f} | " + " | ".join(
          f"{d[k]['diff']:+.3f} [{d[k]['ci'][0]:+.3f}, {d[k]['ci'][1]:+.3f}]" for k in mk) + " |")
  lines += ["", "Crossover (the lowest test AUC from which the method beats best-of-N at every "
            "higher level; Chen et al. 2024 put it at about 0.9 discriminator accuracy):", ""]
  for k, v in result["crossover"].items():
    if v["auc"] is None:
      lines.append(f"- {k}: no crossover up to AUC {v['no_crossover_up_to']:.3f}")
    else:
      low = v["between"][0]
      lines.append(f"- {k}: from AUC {v['auc']:.3f} (" + (
          f"between {low:.3f} and {v['auc']:.3f})" if low is not None else
          "already at the lowest level)"))
  return "\n".join(lines) + "\n"


def check_verifier_axis(c: ml_collections.ConfigDict, known: Facts) -> None:
  del known
  ac = c.verifier_axis
  aucs = list(ac.aucs)
  if not aucs or any(not isinstance(a, float) or not 0.5 <= a < 1 for a in aucs) \
      or aucs != sorted(set(aucs)):
    raise ConfigError(f"verifier_axis.aucs={ac.aucs!r}: expected increasing numbers in [0.5, 1).")
  check_int(ac.calibration_problems, "verifier_axis.calibration_problems", 1)
  check_int(ac.samples_per_problem, "verifier_axis.samples_per_problem", 2)
  bad = [m for m in ac.methods if m not in (registry.BEST_OF_N,) + TREE]
  if bad or registry.BEST_OF_N not in ac.methods:
    raise ConfigError(f"verifier_axis.methods={ac.methods!r}: expected best_of_n and any of "
                      f"{TREE}.")
  if not set(ac.budgets) <= set(c.search.budgets):
    raise ConfigError(f"verifier_axis.budgets={ac.budgets!r}: expected budgets of "
                      f"search.budgets={c.search.budgets!r}.")


VERIFIER_AXIS = Stage(
    name="verifier_axis", doc="search against a synthetic verifier of controlled AUC "
    "(diagnosis: where tree search starts to beat best-of-N)",
    inputs=("data", "policy", "difficulty"),
    sections=("seed", "sampling", "test_problems", "search", "verifier_axis"),
    outputs=("axis.json",), run=run_verifier_axis, load=load_json("axis.json"),
    speed_only=("search.rows_per_call",), cost_s=900,
    checks={"verifier_axis": check_verifier_axis})
