"""Verifier evaluation: the analog of the paper's Figure 3 (left) on the workdir's task.

On the first ``eval.num_problems`` test problems, ``eval.samples_per_problem``
policy samples each are scored by the PRM (step scores, aggregated last / min /
prod) and the ORM. Written to WORKDIR/verifiers:

* eval.json: accuracy of majority vote, vanilla best-of-N and weighted best-of-N
  for N = 1, 2, 4, ..., each averaged over ``eval.subsamples`` random N-subsets;
  the policy's pass@1 on the same samples; the PRM's step-level ROC AUC against
  Monte-Carlo labels of held-out test samples (other samples, other problems'
  rollouts: streams not used for training).
* eval.png: accuracy against N per method, and the ROC curve.

Sampled and scored data is cached in scored.npz keyed by the config, so a
rerun only redoes the (cheap) aggregation.
"""

from __future__ import annotations

import os

from absl import logging
import ml_collections
import numpy as np
from scipy import stats

from ttc_jax import workdir as wd
from ttc_jax.sampling import solutions
from ttc_jax.training import parts
from ttc_jax.verifiers import aggregation
from ttc_jax.verifiers import labels as labels_lib
from ttc_jax.verifiers.scoring import STEP_AGGREGATIONS
from ttc_jax.verifiers.scoring import Scorer
from ttc_jax.verifiers.scoring import aggregate_steps


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """Area under the ROC curve (Mann-Whitney U; ties count one half)."""
  scores = np.asarray(scores, np.float64)
  positive = np.asarray(positive, bool)
  n1, n0 = positive.sum(), (~positive).sum()
  if n1 == 0 or n0 == 0:
    return float("nan")
  ranks = stats.rankdata(scores)
  return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  order = np.argsort(-np.asarray(scores), kind="stable")
  pos = np.asarray(positive, bool)[order]
  tpr = np.concatenate([[0], np.cumsum(pos) / max(pos.sum(), 1)])
  fpr = np.concatenate([[0], np.cumsum(~pos) / max((~pos).sum(), 1)])
  return fpr, tpr


def _powers_of_two(m: int) -> list[int]:
  ns, n = [], 1
  while n <= m:
    ns.append(n)
    n *= 2
  return ns


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates the workdir's PRM and ORM (see the module docstring)."""
  if config.part != "verifiers":
    raise ValueError(f"evaluate runs the 'verifiers' part, not {config.part!r}.")
  wd.check_and_record(config, workdir)
  out_dir = wd.part_dir(workdir, "verifiers")
  ec = config.eval
  task = wd.get_task(config)
  tok = wd.tokenizer(config, workdir, task)
  sp = parts.sampling_params(config)
  key = {f"{part}_done": wd.read_json(os.path.join(wd.part_dir(workdir, part), "done.json"))
         for part in ("policy", "prm", "orm")}
  key.update({"eval": ec.to_dict(), "sampling": config.sampling.to_dict(), "seed": config.seed})
  cache = os.path.join(out_dir, "scored.npz")
  probs = wd.problems(task, "test", workdir, ec.num_problems + ec.auc_problems)
  eval_probs, auc_probs = probs[:ec.num_problems], probs[ec.num_problems:]
  if os.path.exists(cache) and wd.read_json(cache + ".json") == key:
    logging.info("verifiers: reusing sampled and scored data in %s", cache)
    with np.load(cache, allow_pickle=False) as z:
      d = {k: z[k] for k in z.files}
  else:
    d = _sample_and_score(config, workdir, task, tok, sp, eval_probs, auc_probs)
    np.savez(cache + ".tmp.npz", **d)
    os.replace(cache + ".tmp.npz", cache)
    wd.write_json(cache + ".json", key)

  m = ec.samples_per_problem
  answers = d["answers"].reshape(len(eval_probs), m)
  answers = [[a if a != "" else None for a in row] for row in answers.tolist()]
  truth = [task.normalize_answer(p.answer) for p in eval_probs]
  ns = _powers_of_two(m)
  curves = {"majority": aggregation.accuracy_curves(
      answers, truth, None, ns, ["majority"], ec.subsamples, config.seed)["majority"]}
  scores = {f"prm_{h}": d[f"prm_{h}"] for h in STEP_AGGREGATIONS}
  scores["orm"] = d["orm"]
  for name, s in scores.items():
    c = aggregation.accuracy_curves(answers, truth, s.reshape(len(eval_probs), m), ns,
                                    ["best_of_n", "weighted"], ec.subsamples, config.seed)
    curves[f"{name}/best_of_n"] = c["best_of_n"]
    curves[f"{name}/weighted"] = c["weighted"]
  pass1 = float(d["correct"].mean())

  auc_scores, auc_labels = d["auc_scores"], d["auc_labels"]
  positive = auc_labels >= 0.5
  auc = {"prm_step_auc": roc_auc(auc_scores, positive),
         "num_steps": int(auc_labels.size), "num_positive": int(positive.sum()),
         "pearson_r": float(np.corrcoef(auc_scores, auc_labels)[0, 1])
         if auc_labels.size > 1 else float("nan"),
         "positive_means": "MC label >= 0.5", "problems": len(auc_probs),
         "samples_per_problem": ec.auc_samples_per_problem, "rollouts": ec.rollouts}
  best64 = {k: v[-1] for k, v in curves.items()}
  result = {
      "n": ns, "curves": curves, "pass_at_1": pass1, "auc": auc,
      "num_problems": len(eval_probs), "samples_per_problem": m, "subsamples": ec.subsamples,
      f"accuracy_at_n{ns[-1]}": best64,
      "prm_weighted_minus_pass_at_1": best64["prm_last/weighted"] - pass1,
      "prm_vs_orm_weighted_at_max_n": best64["prm_last/weighted"] - best64["orm/weighted"],
  }
  wd.write_json(os.path.join(out_dir, "eval.json"), result)
  plot(result, auc_scores, positive, os.path.join(out_dir, "eval.png"))
  logging.info("verifiers: pass@1 %.3f; at N=%d: %s; PRM step AUC %.3f", pass1, ns[-1],
               {k: round(v, 3) for k, v in best64.items()}, auc["prm_step_auc"])
  return result


def _sample_and_score(config, workdir, task, tok, sp, eval_probs, auc_probs) -> dict:
  ec = config.eval
  policy = wd.load_model(config, workdir, "policy", tok)
  core = wd.policy_core(config, workdir, tok, policy)
  samples = solutions.sample_problems(core, tok, task, eval_probs, ec.samples_per_problem,
                                      config.seed, "verifier_eval", sp,
                                      batch_size=config.sampling.batch_size)
  rows = [samples.prompts[i // samples.n] + samples.gens.row(i) for i in range(len(samples.texts))]
  ends = [[len(samples.prompts[i // samples.n]) + e
           for e in solutions.step_ends(samples.gens.row(i), tok.step_id, tok.eos_id)]
          for i in range(len(rows))]
  # AUC data: held-out test samples with MC labels (streams not used elsewhere).
  auc_samples = solutions.sample_problems(core, tok, task, auc_probs, ec.auc_samples_per_problem,
                                          config.seed, "auc_samples", sp,
                                          batch_size=config.sampling.batch_size)
  auc_ls = labels_lib.label_samples(core, tok, task, auc_samples, ec.rollouts, config.seed,
                                    "auc_rollouts", sp, batch_size=config.sampling.batch_size)
  del core, policy
  bs = config.sampling.batch_size
  prm = Scorer(wd.load_model(config, workdir, "prm", tok), pad_id=tok.pad_id)
  prm_steps = prm.step_scores(rows, ends, batch_size=bs)
  auc_rows = [auc_ls.row(i) for i in range(len(auc_ls))]
  auc_steps = prm.step_scores(auc_rows, [auc_ls.ends(i) for i in range(len(auc_ls))],
                              batch_size=bs)
  orm = Scorer(wd.load_model(config, workdir, "orm", tok), pad_id=tok.pad_id)
  orm_scores = aggregate_steps(orm.step_scores(rows, [[len(r) - 1] for r in rows],
                                               batch_size=bs), "last")
  d = {"answers": np.array(["" if a is None else a for a in samples.answers]),
       "correct": samples.correct, "orm": orm_scores,
       "auc_scores": np.concatenate([s for s in auc_steps]).astype(np.float64),
       "auc_labels": np.concatenate([auc_ls.labels[i, :len(auc_ls.ends(i))]
                                     for i in range(len(auc_ls))]).astype(np.float64)}
  for h in STEP_AGGREGATIONS:
    d[f"prm_{h}"] = aggregate_steps(prm_steps, h)
  return d


def plot(result: dict, auc_scores: np.ndarray, positive: np.ndarray, path: str) -> None:
  # The Figure API needs no pyplot backend: nothing global changes (notebooks keep
  # their inline backend).
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(12, 4.5))
  a, b = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
  ns = result["n"]
  styles = {"best_of_n": "--", "weighted": "-"}
  colors = {"prm_last": "tab:blue", "prm_min": "tab:cyan", "prm_prod": "tab:purple",
            "orm": "tab:red"}
  for name, curve in result["curves"].items():
    if name == "majority":
      a.plot(ns, curve, "k:", marker="o", ms=3, label="majority")
      continue
    verifier, method = name.split("/")
    a.plot(ns, curve, styles[method], color=colors[verifier], marker="o", ms=3,
           label=f"{verifier} {method}")
  a.axhline(result["pass_at_1"], color="gray", lw=0.8, label="pass@1")
  a.set_xscale("log", base=2)
  a.set_xlabel("N (samples per problem)")
  a.set_ylabel("accuracy")
  a.set_title(f"best-of-N on {result['num_problems']} test problems "
              f"(mean of {result['subsamples']} subsets)")
  a.legend(fontsize=7, ncol=2)
  fpr, tpr = roc_curve(auc_scores, positive)
  b.plot(fpr, tpr, color="tab:blue")
  b.plot([0, 1], [0, 1], "k:", lw=0.8)
  b.set_xlabel("false positive rate")
  b.set_ylabel("true positive rate")
  b.set_title(f"PRM steps vs MC labels: AUC {result['auc']['prm_step_auc']:.3f}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
