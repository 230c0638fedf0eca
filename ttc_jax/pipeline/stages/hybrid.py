"""Search then revise (beyond the paper: its second open direction): a search cell (beam
search, DVTS or best-of-N) whose best candidate the revision model then revises; cells that
join the compute-optimal candidate set."""

from __future__ import annotations

import time

import ml_collections
import numpy as np

from ttc_jax import accounting
from ttc_jax.pipeline.config import ConfigError
from ttc_jax.pipeline.config import Facts
from ttc_jax.pipeline.stage import Context
from ttc_jax.pipeline.stage import Stage
from ttc_jax.pipeline.stage import sampling_params
from ttc_jax.pipeline.stage import segment
from ttc_jax.pipeline.stages.revisions import chain_strategy
from ttc_jax.pipeline.stages.search import SEARCH_SWEEP
from ttc_jax.pipeline.stages.search import outcome_of
from ttc_jax.progress import CompileClock
from ttc_jax.search import SearchContext
from ttc_jax.search import registry
from ttc_jax.search import revisions as chains_lib
from ttc_jax.search import search_problems
from ttc_jax.search.records import Cell
from ttc_jax.search.records import Outcome
from ttc_jax.search.records import cell_key
from ttc_jax.search.records import cells_from_json
from ttc_jax.verifiers import aggregation


def _search_section(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The search sweep's section cut to the hybrid's methods, budgets and seed: its cells
  are the sweep's own (same strategies and keys)."""
  sc = ml_collections.ConfigDict(c.search.to_dict())
  sc.methods, sc.budgets, sc.seeds = tuple(c.hybrid.methods), tuple(c.hybrid.budgets), (
      c.hybrid.seed,)
  return sc


def best_candidate(result):
  """The candidate search would answer with: the highest-scoring of those giving the
  selected answer (None: none finished)."""
  pool = [x for x in result.candidates if result.answer is not None and x.answer == result.answer]
  if not pool:
    return None
  return max(pool, key=lambda x: x.score)


def choose(search_answer: str | None, revised: list[str | None], selection: str) -> str | None:
  """The final answer: the last revision ('last'), or the majority of the search's answer and
  the revisions, ties to the earliest (the search's) ('vote')."""
  if selection == "last":
    return revised[-1]
  return aggregation.select_answer([search_answer] + list(revised), None, "majority")


def run_hybrid_sweep(ctx: Context) -> dict:
  """For each search cell of ``hybrid`` (the sweep's methods at the hybrid budgets, one seed):
  run it, seed one revision chain per problem with its best candidate, and make a cell per
  number of revisions L and final-answer selection: generations S + L, tokens and FLOPs of
  the search and of the revision model's chain."""
  c = ctx.config
  hc = c.hybrid
  pol, rev = ctx.sampler(), ctx.inputs["revision_model"]
  tok, task = pol.tokenizer, pol.task
  probs = ctx.inputs["data"].problems("test", c.test_problems)
  truths = [task.normalize_answer(p.answer) for p in probs]
  rev_cost = accounting.ModelCost.from_config(rev.config)
  longest = max(hc.revisions)
  strategy = chain_strategy(rev, (longest,))
  log = ctx.out.cells("cells.jsonl")
  done = log.read()
  keys = []
  clock = CompileClock.get()
  for cell in registry.sweep(_search_section(c)):
    names = [(registry.name_of(registry.HYBRID, search=cell.method, selection=sel), sel, L)
             for L in hc.revisions for sel in registry.HYBRID_SELECTIONS]
    cell_keys = [cell_key(n, {**cell.params, "revisions": L}, cell.seed) for n, _, L in names]
    keys += cell_keys
    if all(k in done for k in cell_keys):
      continue
    compiled0, t0 = clock.seconds, time.time()
    sctx = SearchContext(core=pol.core, prm=ctx.verifier(c.search.verifier), task=task,
                         tokenizer=tok, seed=c.seed, run=cell.seed, sp=pol.sp,
                         max_step_tokens=c.search.max_step_tokens)
    results = search_problems(cell.strategy, sctx, probs, rows_per_call=c.search.rows_per_call)
    best = [best_candidate(r) for r in results]
    seeds = [[[] if b is None else [tok.decode(b.tokens)]] for b in best]
    pcs = chains_lib.run_chains(strategy, rev.sampling_core(), tok, task, probs, seed=c.seed,
                                stream="hybrid_chains", sp=sampling_params(c), run=cell.seed,
                                rows_per_call=c.sampling.batch_size, seeds=seeds,
                                segment=segment(c), log_fn=ctx.log)
    compile_s = clock.seconds - compiled0
    wall = time.time() - t0 - compile_s
    rows = []
    for (name, sel, L), key in zip(names, cell_keys):
      outcomes = []
      for r, pc, truth in zip(results, pcs, truths):
        chain = pc.chains[0][:L]
        answer = choose(r.answer, [a.answer for a in chain], sel)
        prefix = len(pc.prefix)
        run = sum(a.extension_tokens + len(a.tokens) for a in chain)
        # The revision model: the problem's prefix once, each answer's extension and tokens
        # after it (as the revision sweep counts them).
        flops = float(accounting.forward_flops(rev_cost, 0, prefix) + sum(
            accounting.forward_flops(rev_cost, prefix, prefix + a.extension_tokens
                                     + len(a.tokens)) for a in chain))
        base = outcome_of(r)
        outcomes.append(Outcome(
            problem=r.problem.uid, correct=int(answer is not None and answer == truth),
            answer=answer, finished=base.finished + sum(a.finished for a in chain),
            policy_tokens=base.policy_tokens + prefix + run, prm_tokens=base.prm_tokens,
            flops=base.flops + flops, policy_flops=base.policy_flops + flops,
            prm_flops=base.prm_flops))
      record = Cell(method=name, params={**cell.params, "revisions": L}, seed=cell.seed,
                    budget_generations=cell.strategy.generations + L, outcomes=tuple(outcomes),
                    wall_s=wall, compile_s=compile_s)
      assert record.key == key
      rows.append(record.to_json())
    log.append(rows)
    ctx.log(f"hybrid {cell.method} {cell.params}: search accuracy "
            f"{np.mean([r.correct for r in results]):.3f}; then revised " + ", ".join(
                f"{sel} L={L} {np.mean([x['correct'] for x in rows if x['key'] == k][0]):.3f}"
                for (_, sel, L), k in zip(names, cell_keys)))
  ctx.out.barrier()
  done = log.read()
  out = [done[k] for k in keys]
  ctx.out.write_json("cells.json", out)
  return {"cells": len(out)}


def load_hybrid(out, key: dict) -> list[Cell]:
  del key
  return cells_from_json(out.read_json("cells.json"))


def check_hybrid(c: ml_collections.ConfigDict, known: Facts) -> None:
  del known
  hc = c.hybrid
  methods = list(hc.methods)
  allowed = (registry.BEST_OF_N, registry.BEAM, registry.BEAM_SQRT, registry.DVTS_FAMILY,
             registry.PARTICLES)
  if not methods or any(m not in allowed for m in methods):
    raise ConfigError(f"hybrid.methods={hc.methods!r}: expected search families of {allowed}.")
  budgets = list(hc.budgets)
  if not budgets or any(isinstance(b, bool) or not isinstance(b, int) or b < 2 for b in budgets):
    raise ConfigError(f"hybrid.budgets={hc.budgets!r}: expected search budgets >= 2.")
  bad = [b for b in budgets if b % c.search.beam_width and registry.BEAM in methods]
  if bad:
    raise ConfigError(f"hybrid.budgets={hc.budgets!r}: search.beam_width={c.search.beam_width} "
                      "must divide every budget of a beam search.")
  revs = list(hc.revisions)
  if not revs or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in revs):
    raise ConfigError(f"hybrid.revisions={hc.revisions!r}: expected numbers of revisions >= 1.")
  if isinstance(hc.seed, bool) or not isinstance(hc.seed, int) or hc.seed < 0:
    raise ConfigError(f"hybrid.seed={hc.seed!r}: expected a search seed >= 0.")


HYBRID_SWEEP = Stage(
    name="hybrid_sweep", doc="search then revise: the search's best candidate revised by the "
    "revision model (cells for compute-optimal selection)",
    inputs=("data", "policy", "prm", "implicit_prm", "dpo", "sft_lm", "verifier_choice",
            "revision_model"),
    sections=("seed", "sampling", "test_problems", "search", "hybrid"),
    outputs=("cells.json",), run=run_hybrid_sweep, load=load_hybrid,
    may_lack=("prm", "implicit_prm", "dpo", "sft_lm", "verifier_choice"),
    reads=SEARCH_SWEEP.reads,
    speed_only=("search.rows_per_call",), cost_s=25,
    checks={"hybrid": check_hybrid})
