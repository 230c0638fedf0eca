"""The study (the main job): search methods x budgets x oracle difficulty bins.

``run(config, workdir)``:

1. trains the policy, PRM and ORM parts, or reuses them from the workdir;
2. estimates oracle difficulty on the first ``study.num_problems`` test problems
   (pass@1 from ``study.difficulty_samples`` samples each; 5 quantile bins);
3. runs every cell (method, params, N) of the sweep -- weighted best-of-N, beam
   search with M = 4 and M = sqrt(N), lookahead with k = 1 and 3 -- and appends
   each finished cell to WORKDIR/study/cells.jsonl (keyed by what produced it);
   a rerun skips finished cells, so SIGKILL at any moment loses at most the
   running cell and the rerun ends with the same numbers;
4. writes WORKDIR/study/results.json, the figures and report.md.
"""

from __future__ import annotations

import json
import os
import time

from absl import logging
import ml_collections
import numpy as np

from ttc_jax import difficulty
from ttc_jax import host
from ttc_jax import workdir as wd
from ttc_jax.progress import CompileClock
from ttc_jax.progress import Progress
from ttc_jax.sampling import solutions
from ttc_jax.search import BeamSearch
from ttc_jax.search import BestOfN
from ttc_jax.search import default_width
from ttc_jax.study import report
from ttc_jax.training import parts


def sweep(config: ml_collections.ConfigDict) -> list[dict]:
  """The cells of the sweep: {method, params, n, strategy} in run order."""
  sc = config.study
  cells = []
  for n in sc.budgets:
    cells.append({"method": "best_of_n_weighted", "params": {"n": n},
                  "strategy": BestOfN(n=n, selection="weighted", step_aggregation="last")})
  for n in sc.budgets:
    m = min(sc.beam_width, n)
    cells.append({"method": f"beam_m{sc.beam_width}", "params": {"n": n, "m": m},
                  "strategy": BeamSearch(n=n, width=m, max_rounds=sc.max_rounds)})
    m = default_width(n)
    cells.append({"method": "beam_sqrt", "params": {"n": n, "m": m},
                  "strategy": BeamSearch(n=n, width=m, max_rounds=sc.max_rounds)})
  for k in sc.lookahead_steps:
    for n in sc.budgets:
      if n < sc.beam_width or n * (k + 1) > max(sc.budgets):
        continue  # the budget N x (k + 1) must fit the sweep's range
      cells.append({"method": f"lookahead_k{k}", "params": {"n": n, "m": sc.beam_width, "k": k},
                    "strategy": BeamSearch(n=n, width=sc.beam_width, lookahead=k,
                                           max_rounds=sc.max_rounds)})
  return cells


def _chunks(num: int, cap: int) -> list[list[int]]:
  """Problem indices per search call: equal-size calls of at most ``cap`` problems; the
  last is padded by repeating its first problem (those duplicate results are dropped)."""
  calls = -(-num // cap)
  size = -(-num // calls)
  out = []
  for s in range(0, num, size):
    idx = list(range(s, min(num, s + size)))
    out.append(idx + [idx[0]] * (size - len(idx)))
  return out


def cell_key(cell: dict) -> str:
  return json.dumps({"method": cell["method"], "params": cell["params"]}, sort_keys=True)


def _read_cells(path: str, spec: dict) -> dict[str, dict]:
  """Finished cells of this spec; a torn last line (killed mid-write) is ignored."""
  done = {}
  if not os.path.exists(path):
    return done
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if row.get("spec") == spec:
        done[row["key"]] = row
  return done


def oracle_difficulty(config, workdir, task, tok, core, probs) -> dict:
  """pass@1 per problem from ``difficulty_samples`` samples, and its 5 quantile bins."""
  out = os.path.join(wd.part_dir(workdir, "study"), "difficulty.json")
  key = {"policy": wd.read_json(os.path.join(wd.part_dir(workdir, "policy"), "done.json")),
         "num_problems": len(probs), "samples": config.study.difficulty_samples,
         "sampling": config.sampling.to_dict(), "seed": config.seed}
  if os.path.exists(out) and wd.read_json(out)["key"] == key:
    return wd.read_json(out)
  samples = solutions.sample_problems(core, tok, task, probs, config.study.difficulty_samples,
                                      config.seed, "pass_at_1", parts.sampling_params(config),
                                      batch_size=config.sampling.batch_size)
  p1 = samples.correct_matrix().mean(axis=1)
  result = {"key": key, "pass_at_1": p1.tolist(), "bins": difficulty.oracle_bins(p1).tolist(),
            "mean_pass_at_1": float(p1.mean())}
  wd.write_json(out, result)
  return result


def _free_compiled_code() -> None:
  """Unmaps compiled programs when the process nears vm.max_map_count (see
  :func:`ttc_jax.host.free_compiled_code`); a sweep compiles hundreds of shapes."""
  if host.free_compiled_code():
    logging.info("study: dropped JAX's compiled programs (memory-map limit); shapes "
                 "needed again are recompiled")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  if config.part != "study":
    raise ValueError(f"the study runs part 'study', not {config.part!r}.")
  if not workdir:
    raise wd.WorkdirError("--workdir is required.")
  t_start = time.time()
  # 1. Train (or reuse) the models: each part is resumable and skips finished work.
  part_config = wd.part_config
  for part in ("policy", "prm", "orm"):
    if not os.path.exists(os.path.join(wd.part_dir(workdir, part), "done.json")):
      logging.info("study: training part %r", part)
      _free_compiled_code()
      parts.run(part_config(config, part), workdir)
  wd.check_and_record(config, workdir)
  pcfg = part_config(config, "policy")
  task = wd.get_task(pcfg)
  tok = wd.tokenizer(pcfg, workdir, task)
  probs = wd.problems(task, "test", workdir, config.study.num_problems)
  core = wd.policy_core(pcfg, workdir, tok)
  diff = oracle_difficulty(config, workdir, task, tok, core, probs)
  bins = np.asarray(diff["bins"])

  # 2. The sweep, one cell at a time, appended as it finishes.
  study_dir = wd.part_dir(workdir, "study")
  cells_path = os.path.join(study_dir, "cells.jsonl")
  spec = {"difficulty": diff["key"], "study": {k: v for k, v in config.study.to_dict().items()},
          "prm": wd.read_json(os.path.join(wd.part_dir(workdir, "prm"), "done.json"))["step"],
          "seed": config.seed}
  spec = json.loads(json.dumps(spec))
  done = _read_cells(cells_path, spec)
  cells = sweep(config)
  todo = [c for c in cells if cell_key(c) not in done]
  logging.info("study: %d cells, %d already done", len(cells), len(cells) - len(todo))
  if todo:
    ctx = wd.search_context(pcfg, workdir, max_step_tokens=config.study.max_step_tokens)
    progress = Progress(len(cells), "study cells", unit="cells", every_s=0,
                        initial=len(cells) - len(todo))
    chunk = config.study.rows_per_call
    clock = CompileClock.get()
    with open(cells_path, "a") as f:
      for cell in todo:
        _free_compiled_code()
        strategy = cell["strategy"]
        calls = _chunks(len(probs), max(1, chunk // strategy.n))
        compiled0, t0 = clock.seconds, time.time()
        results = []
        for idx in calls:
          results += strategy.run(ctx, [probs[i] for i in idx])[:len(set(idx))]
        # wall_s excludes XLA tracing / compilation of new shapes (compile_s).
        compile_s = clock.seconds - compiled0
        wall = time.time() - t0 - compile_s
        correct = np.array([r.correct for r in results], float)
        budget = sum((r.budget for r in results[1:]), results[0].budget)
        row = {"key": cell_key(cell), "spec": spec, "method": cell["method"],
               "params": cell["params"],
               "budget_generations": strategy.generations,
               "accuracy": float(correct.mean()),
               "accuracy_by_bin": [float(correct[bins == b].mean()) for b in range(5)],
               "policy_tokens": budget.policy_tokens, "prm_tokens": budget.prm_tokens,
               "flops": budget.flops, "wall_s": wall, "compile_s": compile_s}
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
        progress.update(1, extra=f"{cell['method']} {cell['params']}: acc {row['accuracy']:.3f} "
                                 f"in {wall:.1f}s")
    done = _read_cells(cells_path, spec)

  # 3. results.json, figures, report.
  curves = [{k: v for k, v in done[cell_key(c)].items() if k not in ("key", "spec", "compile_s")}
            for c in cells]
  result = {"curves": curves, "perf": perf(curves, f"beam_m{config.study.beam_width}"),
            "difficulty": {
      "num_problems": len(probs), "samples_per_problem": config.study.difficulty_samples,
      "mean_pass_at_1": diff["mean_pass_at_1"],
      "bin_mean_pass_at_1": [float(np.asarray(diff["pass_at_1"])[bins == b].mean())
                             for b in range(5)]},
            "verifiers": _verifier_summary(workdir)}
  wd.write_json(os.path.join(study_dir, "results.json"), result)
  report.write(result, study_dir, config)
  logging.info("study: done in %.0fs -> %s", time.time() - t_start,
               os.path.join(study_dir, "report.md"))
  return result


def perf(curves: list[dict], beam_method: str = "beam_m4") -> dict:
  """Beam search (M = study.beam_width) over best-of-N wall time at the largest N, and
  PRM tokens per policy token over every beam and lookahead cell."""
  def find(method, n):
    for c in curves:
      if c["method"] == method and c["params"]["n"] == n:
        return c
    return None

  nmax = max(c["params"]["n"] for c in curves)
  beam, bon = find(beam_method, nmax), find("best_of_n_weighted", nmax)
  search = [c for c in curves if c["method"].startswith(("beam", "lookahead"))]
  pol = sum(c["policy_tokens"] for c in search)
  return {
      "beam_vs_bon_wall_ratio": beam["wall_s"] / bon["wall_s"] if beam and bon else None,
      "beam_vs_bon_n": nmax,
      "beam_method": beam_method,
      "prm_tokens_per_policy_token": sum(c["prm_tokens"] for c in search) / pol if pol else None,
  }


def _verifier_summary(workdir: str) -> dict | None:
  path = os.path.join(wd.part_dir(workdir, "verifiers"), "eval.json")
  if not os.path.exists(path):
    return None
  ev = wd.read_json(path)
  return {"pass_at_1": ev["pass_at_1"], "accuracy_at_max_n": ev[f"accuracy_at_n{ev['n'][-1]}"],
          "prm_step_auc": ev["auc"]["prm_step_auc"]}

