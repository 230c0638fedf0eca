"""Revision chains as arrays: every answer of every chain of a problem, graded and scored by
the revision ORM (its earlier answers in context), the PRM and the revision model's own
confidence, with its token counts (the revision sweep's shards), and the chains of every
seed of a sweep."""

from __future__ import annotations

import dataclasses

import numpy as np

from ttc_jax.sampling import solutions
from ttc_jax.search.revisions import ProblemChains
from ttc_jax.verifiers.base import Verifier
from ttc_jax.verifiers.confidence import Measure
from ttc_jax.verifiers.scoring import aggregate_steps


@dataclasses.dataclass
class RevisionSweep:
  """The revision chains of every seed (the chains dicts of
  :mod:`ttc_jax.analysis.revisions`) and the budgets they cover."""

  by_seed: list[dict]
  budgets: list[int]


def chain_arrays(pcs: list[ProblemChains], lengths: tuple[int, ...], orm: Verifier,
                 prm: Verifier, tok, *, batch_size: int, wall_s: float,
                 confidence: Measure) -> dict[str, np.ndarray]:
  """(problems, chains, steps) arrays of chains: grades, answers, scores and tokens of the
  revision ORM (each answer read at its last token, its revision prompt in context) and of
  the PRM (each answer's steps after the problem's prompt, its last step's score), and each
  answer's ``confidence`` under the revision model that wrote it (from the log-probabilities
  sampled with it: no model call)."""
  shape = (len(pcs), len(lengths), max(lengths))
  out = {"mask": np.zeros(shape, bool), "correct": np.zeros(shape, bool),
         "has_answer": np.zeros(shape, bool), "answers": np.full(shape, "", object),
         "orm": np.zeros(shape), "prm": np.zeros(shape), "conf": np.zeros(shape),
         "policy_tokens": np.zeros(shape, np.int64), "orm_tokens": np.zeros(shape, np.int64),
         "prm_tokens": np.zeros(shape, np.int64)}
  where, orm_rows, orm_prompts, prm_rows, prm_ends, questions, prefixes = ([] for _ in range(7))
  for q, pc in enumerate(pcs):
    for ch, chain in enumerate(pc.chains):
      for step, a in enumerate(chain):
        i = (q, ch, step)
        where.append(i)
        out["mask"][i], out["correct"][i] = True, a.correct
        out["has_answer"][i] = a.answer is not None
        out["answers"][i] = a.answer or ""
        out["policy_tokens"][i] = a.extension_tokens + len(a.tokens)
        out["conf"][i] = confidence.score(a.token_stats)
        orm_rows.append(a.prompt + a.tokens)
        orm_prompts.append(len(a.prompt))
        prm_rows.append(pc.prefix + a.tokens)
        prm_ends.append([len(pc.prefix) + e for e in solutions.step_ends(
            a.tokens, tok.step_ids, tok.eos_ids, tok.step_pairs)] or [len(pc.prefix) - 1])
        questions.append(pc.problem.question)
        prefixes.append(len(pc.prefix))
  orm_scores = orm.solution_step_scores(questions, orm_rows, orm_prompts,
                                        [[len(r) - 1] for r in orm_rows], batch_size=batch_size)
  prm_scores = prm.solution_step_scores(questions, prm_rows, prefixes, prm_ends,
                                        batch_size=batch_size)
  orm_tokens = orm.solution_tokens(questions, orm_rows, orm_prompts)
  prm_tokens = prm.solution_tokens(questions, prm_rows, prefixes)
  for j, (i, o, p) in enumerate(zip(where, orm_scores, prm_scores)):
    out["orm"][i], out["prm"][i] = float(o[-1]), float(aggregate_steps([p], "last")[0])
    out["orm_tokens"][i], out["prm_tokens"][i] = orm_tokens[j], prm_tokens[j]
  out["answers"] = out["answers"].astype(str)
  out["prefix_tokens"] = np.asarray([len(pc.prefix) for pc in pcs], np.int64)
  out["problems"] = np.asarray([pc.problem.uid for pc in pcs], str)
  out["wall_s"] = np.float64(wall_s)
  return out


def concat_chain_arrays(parts: list[dict[str, np.ndarray]]) -> dict:
  """One seed's shards as the chains dict of :mod:`ttc_jax.analysis.revisions`."""
  out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]
         if k not in ("wall_s", "answers", "has_answer", "problems")}
  answers = np.concatenate([p["answers"] for p in parts]).astype(object)
  answers[~np.concatenate([p["has_answer"] for p in parts])] = None
  out["answers"] = answers
  out["problems"] = [str(u) for p in parts for u in p["problems"]]
  out["wall_s"] = float(sum(float(p["wall_s"]) for p in parts))
  return out
