"""The search sweep (paper section 5): best-of-N, beam search, DVTS, particle filtering and
lookahead at every budget and search seed, one resumable cell at a time."""

from __future__ import annotations

import math
import time

import ml_collections

from ttc_jax import host
from ttc_jax.analysis import claims as claims_lib
from ttc_jax.analysis import compute_optimal as co_lib
from ttc_jax.analysis import difficulty as difficulty_lib
from ttc_jax.analysis import study as study_lib
from ttc_jax.pipeline import artifacts
from ttc_jax.pipeline import config as config_lib
from ttc_jax.pipeline.config import ConfigError
from ttc_jax.pipeline.config import Facts
from ttc_jax.pipeline.config import check_int
from ttc_jax.pipeline.stage import Context
from ttc_jax.pipeline.stage import Stage
from ttc_jax.pipeline.stage import check_verifier_name
from ttc_jax.pipeline.stages import compute_optimal as compute_optimal_stage
from ttc_jax.progress import CompileClock
from ttc_jax.progress import Progress
from ttc_jax.search import BeamSearch
from ttc_jax.search import BestOfN
from ttc_jax.search import SearchContext
from ttc_jax.search import records
from ttc_jax.search.common import SearchResult
from ttc_jax.search.records import Cell
from ttc_jax.search.records import Outcome
from ttc_jax.search import default_width
from ttc_jax.search import search_problems
from ttc_jax.search.registry import SWEEP_METHODS
from ttc_jax.search import registry
from ttc_jax.search.registry import sweep
from ttc_jax.verifiers import names


def run_search_sweep(ctx: Context) -> dict:
  rows = _sweep_rows(ctx, ctx.config.search.verifier)
  ctx.out.write_json("cells.json", rows)
  return {"cells": len(rows)}


def _sweep_rows(ctx: Context, verifier: str) -> list[dict]:
  """Every cell of the search sweep (``search`` section) with steps scored by ``verifier``,
  resumed from cells.jsonl; the cells as JSON, in sweep order."""
  c = ctx.config
  sc = c.search
  pol = ctx.sampler()
  probs = ctx.inputs["data"].problems("test", c.test_problems)
  cells = sweep(sc)
  log = ctx.out.cells("cells.jsonl")
  done = log.read()
  todo = [cell for cell in cells if cell.key not in done]
  ctx.log(f"search: {len(cells)} cells, {len(cells) - len(todo)} already done; steps scored "
          f"by {verifier}")
  if todo:
    scorer = ctx.verifier(verifier)
    progress = Progress(len(cells), "search cells", unit="cells", every_s=0,
                        initial=len(cells) - len(todo), log_fn=ctx.log)
    clock = CompileClock.get()
    for cell in todo:
      _free_compiled_code(ctx)
      search_ctx = SearchContext(
          core=pol.core, prm=scorer, task=pol.task, tokenizer=pol.tokenizer, seed=c.seed,
          run=cell.seed, sp=pol.sp, max_step_tokens=sc.max_step_tokens)
      compiled0, t0 = clock.seconds, time.time()
      results = search_problems(cell.strategy, search_ctx, probs, rows_per_call=sc.rows_per_call)
      # wall_s excludes XLA tracing / compilation of new shapes (compile_s).
      compile_s = clock.seconds - compiled0
      record = Cell(method=cell.method, params=cell.params, seed=cell.seed,
                    budget_generations=cell.strategy.generations,
                    outcomes=tuple(outcome_of(r) for r in results),
                    wall_s=time.time() - t0 - compile_s, compile_s=compile_s)
      log.append([record.to_json()])
      progress.update(1, extra=f"{cell.method} {cell.params} seed {cell.seed}: acc "
                               f"{record.column('correct').mean():.3f} in {record.wall_s:.1f}s")
      host.hold(f"cell:{progress.done}")  # cells written so far
    ctx.out.barrier()
    done = log.read()
  return [done[cell.key] for cell in cells]


def run_chosen_search(ctx: Context) -> dict:
  """The paper's findings (a)-(c) and (e) under the search verifier chosen on held-out train
  problems (verifier_choice), beside the study's (under ``search.verifier``): the same sweep
  with steps scored by the chosen verifier (the study's own cells when it is the same one),
  its claims, and compute-optimal selection over its cells."""
  c = ctx.config
  choice = ctx.inputs["verifier_choice"]
  name, score = choice["search_verifier"], choice["chosen"]
  if name == c.search.verifier:
    ctx.log(f"chosen search verifier {name}: the study's own sweep")
    rows = [cell.to_json() for cell in ctx.inputs["search_sweep"]]
  else:
    rows = _sweep_rows(ctx, name)
  ctx.out.write_json("cells.json", rows)
  cells = records.cells_from_json(rows)
  diff, ver = ctx.inputs["difficulty"], ctx.inputs["verifier_eval"]
  num_bins = c.report.difficulty_bins
  bins = difficulty_lib.oracle_bins(diff.pass_at_1, num_bins)
  curves = [study_lib.summarize(pt, bins, num_bins, c.seed) for pt in study_lib.points(cells)]
  beam = (registry.reference_beam(study_lib.methods(curves))
          or registry.name_of(registry.BEAM_SQRT))
  correct, mean_scores, gens, flops, _ = compute_optimal_stage.predicted_difficulty(ctx)
  co = co_lib.compute_optimal_summary(
      curves, None, correct, mean_scores, num_bins, gens, flops,
      folds=c.compute_optimal.folds, repeats=c.compute_optimal.repeats, seed=c.seed,
      revision_selection=None)
  claims = (claims_lib.verifier_claims(ver, score, seed=c.seed)
            + claims_lib.search_claims(curves, bins, num_bins, beam, c.seed) + co["claims"])
  result = {"search_verifier": name, "score": score, "same_as_study": name == c.search.verifier,
            "claims": claims, "curves": [cv.to_json() for cv in curves],
            "doc": "The study's search sweep and its findings (a)-(c), (e) with steps scored by "
                   "the verifier chosen on held-out train problems (verifier_choice)."}
  ctx.out.write_json("chosen.json", result)
  ctx.log(f"findings under {name}: " + ", ".join(
      f"{cl['claim']}: {cl['verdict']}" for cl in claims if cl.get("verdict")))
  return {"search_verifier": name, "claims": len(claims)}


def outcome_of(r: SearchResult) -> Outcome:
  """A search result as the one problem's outcome a cell stores."""
  return Outcome(problem=r.problem.uid, correct=int(r.correct), answer=r.answer,
                 finished=len(r.candidates), policy_tokens=r.budget.policy_tokens,
                 prm_tokens=r.budget.prm_tokens, flops=r.budget.flops,
                 policy_flops=r.budget.policy_flops, prm_flops=r.budget.prm_flops)


def load_chosen(out: artifacts.StageDir, key: dict) -> dict:
  del key
  return out.read_json("chosen.json")


def _free_compiled_code(ctx: Context) -> None:
  """Unmaps compiled programs when the process nears vm.max_map_count (see
  :func:`ttc_jax.host.free_compiled_code`); programs needed again come back
  from the persistent compilation cache."""
  if host.free_compiled_code():
    ctx.log("dropped JAX's compiled programs (memory-map limit); shapes needed again are "
            "reloaded from the compilation cache or recompiled")


# ----------------------------------------------------------------------------
# report


def load_cells(out: artifacts.StageDir, key: dict) -> list[Cell]:
  del key
  return records.cells_from_json(out.read_json("cells.json"))


def check_search(c: ml_collections.ConfigDict, known: Facts) -> None:
  del known
  s = c.search
  budgets = list(s.budgets)
  if not budgets or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                        for n in budgets) or budgets != sorted(set(budgets)):
    raise ConfigError(f"search.budgets={s.budgets!r}: expected increasing integers >= 1.")
  check_int(s.beam_width, "search.beam_width", 1)
  seeds = list(s.seeds)
  if not seeds or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in seeds) \
      or len(set(seeds)) != len(seeds):
    raise ConfigError(f"search.seeds={s.seeds!r}: expected distinct integers >= 0.")
  unknown = [m for m in s.methods if m not in SWEEP_METHODS]
  if not s.methods or unknown or len(set(s.methods)) != len(s.methods):
    raise ConfigError(f"search.methods={s.methods!r}: expected distinct names among "
                      f"{SWEEP_METHODS}.")
  if not (isinstance(s.particle_temperature, (int, float)) and s.particle_temperature > 0):
    raise ConfigError(f"search.particle_temperature={s.particle_temperature!r}: expected a "
                      "number > 0.")
  alpha = s.get("advantage", 0.0)
  if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
          and math.isfinite(alpha) and alpha >= 0):
    raise ConfigError(f"search.advantage={alpha!r}: expected a finite number >= 0 (the "
                      "weight of the process advantage in beam search; 0: off).")
  check_int(s.max_rounds, "search.max_rounds", 1)
  check_int(s.max_step_tokens, "search.max_step_tokens", 1, c.sampling.max_new_tokens)
  check_int(s.rows_per_call, "search.rows_per_call", 1)
  for k in s.lookahead_steps:
    check_int(k, "search.lookahead_steps[]", 1)
  try:
    for n in budgets:
      BestOfN(n=n)
      BeamSearch(n=n, width=min(s.beam_width, n), max_rounds=s.max_rounds)
      BeamSearch(n=n, width=default_width(n), max_rounds=s.max_rounds)
  except ValueError as e:
    raise ConfigError(f"search: {e} (search.beam_width={s.beam_width} must divide every "
                      f"budget >= it; budgets {budgets}).") from e
  check_verifier_name(s.verifier, "search.verifier")
  base = names.ensemble_base(s.verifier)
  if base is not None:
    if config_lib.filled_by(c, "verifier_choice") is None:
      raise ConfigError(f"search.verifier={s.verifier!r}: an ensemble is fitted by the verifier "
                        "choice, which this experiment leaves out (stages.verifier_choice=None).")
    if base not in c.verifier_choice.ensembles:
      raise ConfigError(f"search.verifier={s.verifier!r}: verifier_choice.ensembles="
                        f"{tuple(c.verifier_choice.ensembles)!r} does not fit it.")
  model = searched_model(s.verifier)
  if model in (names.PRM,) + names.LM_VERIFIERS and config_lib.filled_by(c, model) is None:
    raise ConfigError(f"search.verifier={s.verifier!r}: this experiment leaves the "
                      f"{model} stage out (stages.{model}=None).")
  if "lookahead" in s.methods and not list(s.lookahead_steps):
    raise ConfigError("search.methods has 'lookahead' but search.lookahead_steps is empty.")
  for k in s.lookahead_steps if "lookahead" in s.methods else ():
    if not any(s.beam_width <= n and n * (k + 1) <= budgets[-1] for n in budgets):
      raise ConfigError(
          f"search.methods has 'lookahead' but no budget fits lookahead_steps k={k}: a "
          f"lookahead cell needs a budget N >= search.beam_width={s.beam_width} with "
          f"N x (k + 1) <= the largest budget {budgets[-1]} (budgets {budgets}). Add a budget, "
          "lower k, or leave lookahead out of search.methods.")

def search_reads(c: ml_collections.ConfigDict, role: str) -> bool:
  """A trained verifier is read only when ``search.verifier`` is it or an ensemble of it, the
  verifier choice only for an ensemble (it holds the fitted weights)."""
  v = c.search.verifier
  if role == "verifier_choice":
    return names.ensemble_base(v) is not None
  if role in (names.PRM,) + names.LM_VERIFIERS:
    return searched_model(v) == role
  return True


def searched_model(verifier: str) -> str | None:
  """The trained model a ``search.verifier`` value scores with ('prm', an LM-head verifier's
  stage; an ensemble's base model), or 'policy' for the policy's confidence; None for a name
  of none (check_search names it)."""
  if verifier == names.PRM:
    return names.PRM
  try:
    return names.charged_model(verifier)
  except ValueError:
    return None


SEARCH_SWEEP = Stage(
    name="search_sweep", doc="best-of-N, beam, DVTS, particle filtering and lookahead search at "
    "every budget and search seed",
    # prm, the LM-head verifiers: the trained verifiers search.verifier may name, and the
    # verifier choice's ensembles of them (each read only then: a search by the policy's
    # confidence needs no PRM).
    inputs=("data", "policy", "prm", "implicit_prm", "dpo", "sft_lm", "verifier_choice"),
    sections=("seed", "sampling", "test_problems", "search"),
    outputs=("cells.jsonl", "cells.json"), run=run_search_sweep, load=load_cells,
    version=3, changelog=("3: FLOPs with attention, policy and PRM apart",),
    may_lack=("prm", "implicit_prm", "dpo", "sft_lm", "verifier_choice"), reads=search_reads,
    speed_only=("search.rows_per_call",), cost_s=425,
    checks={"search": check_search})

CHOSEN_SEARCH = Stage(
    name="chosen_search", doc="the search sweep and findings (a)-(c), (e) under the verifier "
    "chosen on held-out train problems",
    inputs=("data", "policy", "prm", "orm", "implicit_prm", "dpo", "sft_lm", "difficulty",
            "verifier_eval", "verifier_choice", "search_sweep"),
    sections=("seed", "sampling", "test_problems", "search", "report", "compute_optimal"),
    # (cells.jsonl: its resumable log when it runs a sweep of its own)
    outputs=("cells.json", "chosen.json"), run=run_chosen_search,
    load=load_chosen, may_lack=("orm", "implicit_prm", "dpo", "sft_lm"),
    speed_only=("search.rows_per_call",), cost_s=285)
