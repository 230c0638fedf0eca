"""Sequential revisions against parallel sampling (paper section 6), from stored chains.

A revision model writes answer ``l`` of a chain given the chain's last answers.
For every test problem and search seed the revision stage stores chains
``c = 0 .. C_max - 1`` of lengths :func:`chain_lengths`; a budget of ``N``
generations split into ``C`` chains of length ``L = N / C`` uses chains
``0 .. C - 1`` truncated to their first ``L`` answers (a prefix of a chain is a
chain). Every split of every budget is therefore a re-slicing of one stored run
per seed, as the search sweep's cells are re-slicings of its outcomes.

A seed's chains are a dict of numpy arrays (P problems, ``Cmax`` chains,
``Lmax`` answers): ``problems`` (P uids), ``mask`` (answer exists), ``correct``,
``answers`` (normalized final answer or None), ``orm`` (the revision ORM's score
of an answer given its chain's earlier answers), ``prm`` (the single-answer
PRM's score), ``policy_tokens`` (per answer, beyond the shared question prefix),
``prefix_tokens`` (P: the question prefix, encoded once per problem),
``orm_tokens``, ``prm_tokens`` (per answer); ``policy_cost``, ``orm_cost``,
``prm_cost`` (each model's :meth:`ttc_jax.accounting.ModelCost.to_dict`: the FLOPs,
attention included, are computed from them and the token counts); scalars
``wall_s``, ``seed``.

Selections (:data:`SELECTIONS`) choose one answer per problem from a split's
``C x L`` answers with :func:`ttc_jax.verifiers.aggregation.select_answer`
(answers that are None never win):

* ``majority``: majority vote over the pooled answers;
* ``flat_orm``: weighted best-of-N over the pooled answers, by the ORM score;
* ``hier_orm``: per chain, its answer with the highest ORM score (ties: the
  earliest in the chain; answers that are None are not eligible; a chain with
  no answer gives none), then weighted best-of-N over the chain winners with
  their ORM scores (the paper's hierarchical selection);
* ``flat_prm``: weighted best-of-N over the pooled answers, by the single-answer verifier's
  score (``revisions.verifier``: the PRM, or the likelihood verifier; the columns keep the
  name ``prm``), each answer read after the plain prompt;
* ``hier_prm``: ``hier_orm`` with that single-answer verifier's score: per chain its best
  answer, then weighted best-of-N over the chain winners (a verifier that reads neither
  the earlier answers nor the revision model: a copied answer scores as it did);
* ``flat_conf``, ``hier_conf``: ``flat_orm`` and ``hier_orm`` with each answer's confidence
  (``conf``: the revision model's own, e.g. its mean log-probability; no model call, 0
  verifier FLOPs) in place of the ORM score. Chains stored without ``conf`` have neither.

The paper's findings are tested as in :mod:`ttc_jax.analysis.claims`: paired
bootstraps over problems at the largest budget, pre-specified.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ttc_jax import accounting
from ttc_jax.analysis import claims as claims_lib
from ttc_jax.analysis import stats as stats_lib
from ttc_jax.analysis import study as study_lib
from ttc_jax.search import records
from ttc_jax.search.records import CurvePoint
from ttc_jax.search import registry
from ttc_jax.verifiers import aggregation

SELECTIONS = ("majority", "flat_orm", "hier_orm", "flat_prm", "hier_prm", "flat_conf",
              "hier_conf")
BEST = "hier_orm"  # the paper's best selection: every claim is tested with it
# The verifier each selection runs: its scores, token counts and parameters (None: none runs).
_VERIFIER = {"majority": None, "flat_orm": "orm", "hier_orm": "orm", "flat_prm": "prm",
             "hier_prm": "prm", "flat_conf": None, "hier_conf": None}
# The per-answer score each selection reads.
_SCORE = {"majority": None, "flat_orm": "orm", "hier_orm": "orm", "flat_prm": "prm",
          "hier_prm": "prm", "flat_conf": "conf", "hier_conf": "conf"}
_PER_ANSWER = ("mask", "correct", "answers", "orm", "prm", "policy_tokens", "orm_tokens",
               "prm_tokens")


def available(chains_by_seed: Sequence[dict]) -> list[str]:
  """The selections whose scores every seed's chains hold (``conf`` is optional)."""
  return [s for s in SELECTIONS
          if _SCORE[s] is None or all(_SCORE[s] in ch for ch in chains_by_seed)]


def _power_of_two(n, name: str = "n") -> int:
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 or n & (n - 1):
    raise ValueError(f"{name}={n!r}: expected a power of two >= 1.")
  return int(n)


def splits(n: int) -> list[tuple[int, int]]:
  """All (chains C, length L) with C * L = n, both powers of two, from pure parallel
  (C = n, L = 1) to pure sequential (C = 1, L = n)."""
  n = _power_of_two(n)
  out, c = [], n
  while c >= 1:
    out.append((c, n // c))
    c //= 2
  return out


def chain_lengths(max_n: int) -> list[int]:
  """lengths[c]: the longest prefix of chain c any split of any budget <= ``max_n``
  needs (chain c is used by splits with C > c, whose length is at most max_n / (c + 1)
  rounded down to a power of two): [max_n, max_n / 2, max_n / 4 (x2), ..., 1 (x max_n / 2)]."""
  max_n = _power_of_two(max_n, "max_n")
  return [max(l for c_, l in splits(max_n) if c_ > c) for c in range(max_n)]


def balanced(n: int) -> tuple[int, int]:
  """The balanced split of budget n: C = L = sqrt(n) if n is a perfect square, else L = 2C."""
  n = _power_of_two(n)
  k = n.bit_length() - 1
  c = 1 << (k // 2)
  return c, n // c


def _method(selection: str) -> str:
  return registry.name_of(registry.REVISIONS, selection=selection)


def _check(chains_by_seed: Sequence[dict]) -> list[str]:
  if not chains_by_seed:
    raise ValueError("revision cells need the chains of at least one seed.")
  problems = list(chains_by_seed[0]["problems"])
  for ch in chains_by_seed:
    if list(ch["problems"]) != problems:
      raise ValueError(f"the chains of seed {ch['seed']} are on other problems (or in another "
                       f"order) than those of seed {chains_by_seed[0]['seed']}: every seed needs "
                       "the same problems in the same order.")
    shape = np.shape(ch["mask"])
    if len(shape) != 3 or shape[0] != len(problems):
      raise ValueError(f"seed {ch['seed']}: mask has shape {shape}; expected "
                       f"({len(problems)}, chains, length).")
    for k in _PER_ANSWER + (("conf",) if "conf" in ch else ()):
      if np.shape(ch[k]) != shape:
        raise ValueError(f"seed {ch['seed']}: {k} has shape {np.shape(ch[k])}; expected {shape} "
                         "like mask.")
    if np.shape(ch["prefix_tokens"]) != (len(problems),):
      raise ValueError(f"seed {ch['seed']}: prefix_tokens has shape "
                       f"{np.shape(ch['prefix_tokens'])}; expected ({len(problems)},).")
  return problems


def _require(ch: dict, c: int, l: int) -> None:
  """Every answer of the split (chains < c, steps < l) exists, or a ValueError names one."""
  cmax, lmax = np.shape(ch["mask"])[1:]
  if c > cmax or l > lmax:
    raise ValueError(f"seed {ch['seed']}: the split {c} chains x {l} answers needs more than "
                     f"the stored {cmax} chains x {lmax} answers.")
  missing = np.argwhere(~np.asarray(ch["mask"], bool)[:, :c, :l])
  if missing.size:
    p, ci, li = (int(x) for x in missing[0])
    raise ValueError(f"seed {ch['seed']}: the split {c} chains x {l} answers needs answer {li} "
                     f"(0-based step) of chain {ci} of problem {ch['problems'][p]!r}, which the "
                     f"chains lack ({len(missing)} missing answers in all).")


def select(answers: np.ndarray, orm: np.ndarray, prm: np.ndarray, selection: str,
           conf: np.ndarray | None = None) -> str | None:
  """One problem's chosen answer among a split's (C, L) answers (None: no answer)."""
  answers = np.asarray(answers, object)
  if selection in ("flat_conf", "hier_conf") and conf is None:
    raise ValueError(f"selection {selection!r} needs each answer's confidence (conf).")
  if selection in ("hier_orm", "hier_prm", "hier_conf"):
    winners, scores = [], []
    by = {"hier_orm": orm, "hier_prm": prm, "hier_conf": conf}[selection]
    for row, s in zip(answers, np.asarray(by, np.float64)):
      ok = np.array([a is not None for a in row], bool)
      if ok.any():
        j = int(np.argmax(np.where(ok, s, -np.inf)))  # first maximum: the earliest answer
        winners.append(row[j])
        scores.append(float(s[j]))
    return aggregation.select_answer(winners, scores, "weighted")
  pooled = list(answers.reshape(-1))
  if selection == "majority":
    return aggregation.select_answer(pooled, None, "majority")
  if selection == "flat_orm":
    return aggregation.select_answer(pooled, np.asarray(orm, np.float64).reshape(-1), "weighted")
  if selection == "flat_prm":
    return aggregation.select_answer(pooled, np.asarray(prm, np.float64).reshape(-1), "weighted")
  if selection == "flat_conf":
    return aggregation.select_answer(pooled, np.asarray(conf, np.float64).reshape(-1),
                                     "weighted")
  raise ValueError(f"selection {selection!r}: expected one of {SELECTIONS}.")


def _model_cost(ch: dict, role: str) -> accounting.ModelCost:
  """The chains' ``{role}_cost`` (a :meth:`ttc_jax.accounting.ModelCost.to_dict`)."""
  key = f"{role}_cost"
  if key not in ch:
    raise ValueError(
        f"seed {ch.get('seed')!r}: the chains lack {key!r} (the {role} model's "
        "ModelCost.to_dict(): params, num_layers, attn_width), which the FLOPs with "
        "attention need; chains stored with only bare parameter counts "
        f"({role}_params) predate it: re-run the revision sweep.")
  return accounting.ModelCost.from_dict(ch[key])


def _chain_flops(ch: dict, verifier: str | None, prefix: np.ndarray, per_answer: np.ndarray,
                 c: int, l: int) -> tuple[np.ndarray, np.ndarray]:
  """Per problem, the (policy, verifier) forward FLOPs of the first ``l`` answers of
  chains ``0 .. c - 1`` (:func:`ttc_jax.accounting.forward_flops`, attention included).

  Positions: the revision model runs the problem's prefix once at [0, prefix); each
  answer's prompt is the prefix plus the answer's extension, and its generation
  follows, so the answer's ``policy_tokens`` (extension + generated) sit at
  [prefix, prefix + policy_tokens). The verifiers score each answer's whole sequence
  from scratch (the ORM its revision prompt and answer, the PRM the prefix and
  answer): ``{verifier}_tokens`` at [0, {verifier}_tokens). Missing answers (0
  tokens) cost nothing.
  """
  pol = _model_cost(ch, "policy")
  start = prefix[:, None, None]
  policy = (accounting.forward_flops(pol, 0, prefix)
            + accounting.forward_flops(pol, start, start + per_answer).sum(axis=(1, 2)))
  if verifier is None:
    return policy, np.zeros_like(policy)
  tokens = np.asarray(ch[f"{verifier}_tokens"], np.int64)[:, :c, :l]
  ver = accounting.forward_flops(_model_cost(ch, verifier), 0, tokens).sum(axis=(1, 2))
  return policy, ver


def _cell(ch: dict, selection: str, n: int, c: int, l: int) -> records.Cell:
  answers = np.asarray(ch["answers"], object)[:, :c, :l]
  correct = np.asarray(ch["correct"], bool)[:, :c, :l]
  orm = np.asarray(ch["orm"], np.float64)[:, :c, :l]
  prm = np.asarray(ch["prm"], np.float64)[:, :c, :l]
  conf = np.asarray(ch["conf"], np.float64)[:, :c, :l] if "conf" in ch else None
  chosen, right = [], []
  for p in range(answers.shape[0]):
    a = select(answers[p], orm[p], prm[p], selection, None if conf is None else conf[p])
    chosen.append(a)
    pool = answers[p].reshape(-1)
    ok = correct[p].reshape(-1)
    right.append(int(a is not None and any(x == a and y for x, y in zip(pool, ok))))
  prefix = np.asarray(ch["prefix_tokens"], np.int64)
  per_answer = np.asarray(ch["policy_tokens"], np.int64)[:, :c, :l]
  policy = prefix + per_answer.sum(axis=(1, 2))
  verifier = _VERIFIER[selection]
  policy_flops, ver_flops = _chain_flops(ch, verifier, prefix, per_answer, c, l)
  if verifier is None:
    ver_tokens = np.zeros_like(policy)
  else:
    ver_tokens = np.asarray(ch[f"{verifier}_tokens"], np.int64)[:, :c, :l].sum(axis=(1, 2))
  flops = policy_flops + ver_flops
  generated = int(np.asarray(ch["mask"], bool).sum())
  used = answers.shape[0] * c * l
  finished = [int(sum(a is not None for a in answers[p].reshape(-1)))
              for p in range(answers.shape[0])]
  outcomes = tuple(
      records.Outcome(problem=str(uid), correct=right[p], answer=chosen[p],
                      finished=finished[p], policy_tokens=int(policy[p]),
                      prm_tokens=int(ver_tokens[p]), flops=float(flops[p]),
                      policy_flops=float(policy_flops[p]), prm_flops=float(ver_flops[p]))
      for p, uid in enumerate(ch["problems"]))
  return records.Cell(method=_method(selection), params={"n": n, "chains": c, "length": l},
                      seed=int(ch["seed"]), budget_generations=n, outcomes=outcomes,
                      wall_s=float(ch["wall_s"]) * used / generated if generated else 0.0,
                      compile_s=0.0)


def revision_cells(chains_by_seed: Sequence[dict], budgets: Sequence[int],
                   selections: Sequence[str] | None = None) -> list[records.Cell]:
  """One cell per (seed, selection, budget N, split (C, L)), like the search sweep's
  (:func:`ttc_jax.analysis.study.summarize` reads them). The first seed's cells
  come first.

  Args:
    chains_by_seed: one chains dict per search seed, on the same problems in the same order.
    budgets: generation budgets, powers of two.
    selections: a subset of :data:`SELECTIONS` (None: every one the chains have scores for).

  Raises:
    ValueError: seeds disagree on the problems, a budget is not a power of two, an unknown
      selection, or a split needs an answer the chains lack.
  """
  _check(chains_by_seed)
  selections = available(chains_by_seed) if selections is None else selections
  for s in selections:
    if s not in SELECTIONS:
      raise ValueError(f"selection {s!r}: expected one of {SELECTIONS}.")
    if s not in available(chains_by_seed):
      raise ValueError(f"selection {s!r}: the chains hold no {_SCORE[s]!r} scores.")
  budgets = [_power_of_two(n, "budget") for n in budgets]
  for ch in chains_by_seed:
    for n in budgets:
      for c, l in splits(n):
        _require(ch, c, l)
  return [_cell(ch, sel, n, c, l) for ch in chains_by_seed for sel in selections
          for n in budgets for c, l in splits(n)]


def curves(cells: Sequence[records.Cell], bins: np.ndarray, num_bins: int, seed: int = 0
           ) -> list[CurvePoint]:
  """One curve point per (selection, budget, split): its seeds summarized."""
  return [study_lib.summarize(pt, bins, num_bins, seed) for pt in study_lib.points(cells)]


def find(curves_: Sequence[CurvePoint], selection: str, n: int, c: int
         ) -> CurvePoint | None:
  """The curve point of ``selection`` at budget ``n`` split into ``c`` chains (None: not swept)."""
  return next((r for r in curves_ if r.method == _method(selection)
               and r.params["n"] == n and r.params["chains"] == c), None)


# --- transitions between consecutive answers of a chain --------------------------------------


def ratio_ci(num: np.ndarray, den: np.ndarray, seed: int = 0,
             resamples: int = stats_lib.RESAMPLES,
             confidence: float = stats_lib.CONFIDENCE) -> dict:
  """sum(num) / sum(den) with a percentile bootstrap over problems (``num[i]``, ``den[i]``:
  problem i's counts), deterministic given ``seed``; rate None if sum(den) is 0."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  total = float(den.sum())
  out = {"rate": None, "ci": [None, None], "count": int(num.sum()), "of": int(total),
         "problems": int((den > 0).sum())}
  if total == 0:
    return out
  rate = float(num.sum() / total)
  idx = np.random.default_rng(seed).integers(0, num.size, (resamples, num.size))
  d = den[idx].sum(axis=1)
  r = num[idx].sum(axis=1)[d > 0] / d[d > 0]  # a resample without any pair has no rate
  alpha = (1 - confidence) / 2
  low, high = np.percentile(r, [100 * alpha, 100 * (1 - alpha)]) if r.size else (rate, rate)
  out.update(rate=rate, ci=[float(low), float(high)])
  return out


def transition_counts(chains_by_seed: Sequence[dict]) -> dict[str, np.ndarray]:
  """Per problem and step, pooled over seeds and chains: ``correct`` (P, Lmax) answers at
  each step, ``exists`` (P, Lmax); for step l >= 1 (column l - 1 of the (P, Lmax - 1)
  arrays) over the pairs where answers l - 1 and l both exist: ``prev_correct``,
  ``c2i`` (correct then incorrect), ``prev_incorrect``, ``i2c`` (incorrect then correct)."""
  _check(chains_by_seed)
  lmax = max(np.shape(ch["mask"])[2] for ch in chains_by_seed)
  p = len(chains_by_seed[0]["problems"])
  out = {k: np.zeros((p, lmax), np.int64) for k in ("correct", "exists")}
  out.update({k: np.zeros((p, max(lmax - 1, 0)), np.int64)
              for k in ("prev_correct", "c2i", "prev_incorrect", "i2c")})
  for ch in chains_by_seed:
    m = np.asarray(ch["mask"], bool)
    y = np.asarray(ch["correct"], bool) & m
    k = m.shape[2]
    out["exists"][:, :k] += m.sum(axis=1)
    out["correct"][:, :k] += y.sum(axis=1)
    if k < 2:
      continue
    both = m[:, :, :-1] & m[:, :, 1:]
    before, after = y[:, :, :-1], y[:, :, 1:]
    out["prev_correct"][:, :k - 1] += (both & before).sum(axis=1)
    out["c2i"][:, :k - 1] += (both & before & ~after).sum(axis=1)
    out["prev_incorrect"][:, :k - 1] += (both & ~before).sum(axis=1)
    out["i2c"][:, :k - 1] += (both & ~before & after).sum(axis=1)
  return out


def transitions(chains_by_seed: Sequence[dict], seed: int = 0) -> dict:
  """How revisions change correctness: per step l >= 1 and pooled over the steps, the
  fraction of correct answers at l - 1 that are incorrect at l and of incorrect ones that
  become correct; the accuracy of the answers at each step. Every rate is a ratio of
  counts summed over problems (each problem's counts pooled over seeds and chains) with a
  95% bootstrap interval over problems."""
  n = transition_counts(chains_by_seed)
  steps = [{"step": l + 1,
            "correct_to_incorrect": ratio_ci(n["c2i"][:, l], n["prev_correct"][:, l], seed),
            "incorrect_to_correct": ratio_ci(n["i2c"][:, l], n["prev_incorrect"][:, l], seed)}
           for l in range(n["c2i"].shape[1])]
  accuracy = [{"step": l, **ratio_ci(n["correct"][:, l], n["exists"][:, l], seed)}
              for l in range(n["exists"].shape[1])]
  return {"by_step": steps, "accuracy_by_step": accuracy,
          "pooled": {"correct_to_incorrect": ratio_ci(n["c2i"].sum(1), n["prev_correct"].sum(1),
                                                      seed),
                     "incorrect_to_correct": ratio_ci(n["i2c"].sum(1),
                                                      n["prev_incorrect"].sum(1), seed)},
          "problems": int(n["exists"].shape[0]), "seeds": len(chains_by_seed)}


# --- the paper's findings -------------------------------------------------------------------


def halves(bins: np.ndarray, num_bins: int) -> tuple[np.ndarray, np.ndarray]:
  """The easier and the harder half of the oracle bins, as claims.search_claims defines them."""
  bins = np.asarray(bins)
  easy = bins < num_bins // 2 if num_bins > 1 else np.ones_like(bins, bool)
  hard = bins >= num_bins - num_bins // 2 if num_bins > 1 else np.ones_like(bins, bool)
  return easy, hard


def _label(pt: CurvePoint) -> str:
  if "chains" not in pt.params:
    return f"{pt.method}@{pt.budget_generations}"
  return f"{pt.method} {pt.params['chains']}x{pt.params['length']}"


def _paired(a: CurvePoint | None, b: CurvePoint | None, mask: np.ndarray | None = None,
            seed: int = 0) -> stats_lib.Comparison | None:
  """a - b over the problems of ``mask``; None if either point is missing, they are the same
  point, or the mask is empty."""
  if a is None or b is None or a is b:
    return None
  return study_lib.compare_points(a, b, (_label(a), _label(b)), mask, seed)


def revision_claims(curves_: Sequence[CurvePoint], bins: np.ndarray, num_bins: int,
                    seed: int = 0, selection: str = BEST) -> list[dict]:
  """(d) sequential against parallel at the largest budget with hierarchical ORM selection
  (the paper's; another ``selection``, e.g. 'hier_conf', names itself in each claim): on all
  problems, on the easier half (pure sequential best) and on the harder half (a balanced
  ratio best). A claim whose two points are missing or coincide is left out."""
  rows = [r for r in curves_ if r.method == _method(selection)]
  if not rows:
    return []
  n = max(r.params["n"] for r in rows)
  easy, hard = halves(bins, num_bins)
  seq, par = find(rows, selection, n, 1), find(rows, selection, n, n)
  bc, bl = balanced(n)
  bal = find(rows, selection, n, bc)
  extra = {"budget": n, "selection": selection}
  by = "" if selection == BEST else f" (selected by {selection})"
  out = [
      claims_lib.claim(f"(d) sequential revisions over parallel sampling at budget {n}{by}",
                        "sequential revisions outperform parallel sampling at equal budget "
                        "(Figure 6, left)", _paired(seq, par, seed=seed), **extra,
                        a=[1, n], b=[n, 1]),
      claims_lib.claim(f"(d) pure sequential over the balanced ratio ({bc}x{bl}) on the easier "
                        f"half at budget {n}{by}",
                        "easy problems do best fully sequential (Figure 7)",
                        _paired(seq, bal, easy, seed), **extra, a=[1, n], b=[bc, bl]),
      claims_lib.claim(f"(d) the balanced ratio ({bc}x{bl}) over pure sequential on the "
                        f"harder half at budget {n}{by}",
                        "harder problems need a balance of sequential and parallel (Figure 7)",
                        _paired(bal, seq, hard, seed), **extra, a=[bc, bl], b=[1, n]),
  ]
  return [c for c in out if c is not None]


def best_ratio_by_bin(curves_: Sequence[CurvePoint], bins: np.ndarray, num_bins: int,
                      selection: str = BEST) -> list[dict]:
  """Per budget and difficulty bin, the split with the highest accuracy in that bin (ties:
  the more parallel split), its accuracy and CI; descriptive only (Figure 7)."""
  counts = np.bincount(np.asarray(bins, np.int64), minlength=num_bins)
  rows = [r for r in curves_ if r.method == _method(selection)]
  out = []
  for n in sorted({r.params["n"] for r in rows}):
    pts = [p for p in (find(rows, selection, n, c) for c, _ in splits(n)) if p is not None]
    by_bin = []
    for b in range(num_bins):
      accs = [p.accuracy_by_bin[b] for p in pts]
      if not counts[b] or not pts or all(np.isnan(a) for a in accs):
        by_bin.append({"bin": b, "problems": int(counts[b]), "chains": None, "length": None,
                       "ratio": None, "accuracy": None, "ci": [None, None], "ties": 0})
        continue
      best = max(a for a in accs if not np.isnan(a))
      i = accs.index(best)
      p = pts[i]
      by_bin.append({"bin": b, "problems": int(counts[b]), "chains": p.params["chains"],
                     "length": p.params["length"],
                     "ratio": p.params["length"] / p.params["chains"],
                     "accuracy": float(best), "ci": [float(x) for x in p.ci_by_bin[b]],
                     "ties": int(sum(a == best for a in accs))})
    out.append({"budget": n, "selection": selection, "bins": by_bin})
  return out


def _search_beam(search_curves: Sequence[CurvePoint]) -> str | None:
  return registry.reference_beam(study_lib.methods(search_curves))


def _per_problem_flops(pt: CurvePoint) -> float:
  return pt.flops_per_problem


def compare_to_search(rev_curves: Sequence[CurvePoint],
                      search_curves: Sequence[CurvePoint] | None,
                      seed: int = 0) -> list[dict]:
  """At each budget swept by both, the pure-sequential and the balanced hierarchical-ORM
  points (one row if they coincide) against best-of-N weighted and beam search at equal
  generation budget: the paired difference over problems (revisions - search) and the mean
  FLOPs per problem of each. The revisions' problems must be the search's, in its order."""
  if not search_curves:
    return []
  beam = _search_beam(search_curves)
  others = ["best_of_n_weighted"] + ([beam] if beam else [])
  rows = [r for r in rev_curves if r.method == _method(BEST)]
  out = []
  for n in sorted({r.params["n"] for r in rows}):
    bc, _ = balanced(n)
    mine = {}
    for role, c in (("pure sequential", 1), ("balanced", bc)):
      pt = find(rows, BEST, n, c)
      if pt is not None:
        mine.setdefault(c, (pt, []))[1].append(role)
    for c, (pt, roles) in mine.items():
      for method in others:
        other = study_lib.point(search_curves, method, n)
        if other is None:
          continue
        cmp = _paired(pt, other, seed=seed)
        out.append({"budget": n, "revisions": {
            "method": pt.method, "chains": c, "length": pt.params["length"],
            "role": " = ".join(roles), "accuracy": pt.accuracy, "ci": pt.ci,
            "flops_per_problem": _per_problem_flops(pt)},
            "search": {"method": method, "accuracy": other.accuracy, "ci": other.ci,
                       "flops_per_problem": _per_problem_flops(other)},
            "comparison": cmp.to_json()})
  return out


def compare_at_equal_flops(rev_curves: Sequence[CurvePoint],
                           search_curves: Sequence[CurvePoint] | None,
                           seed: int = 0, method: str = "best_of_n_weighted") -> list[dict]:
  """Revisions against search at (at least) equal FLOPs: each pure-sequential and balanced
  hierarchical-ORM point against the cheapest point of ``method`` that spent at least as
  many FLOPs per problem (search gets the benefit of the doubt); where every swept point
  of ``method`` spent fewer, its most expensive one (``search_flops_at_least`` False).
  Paired difference over problems, revisions - search."""
  if not search_curves:
    return []
  theirs = sorted((c for c in search_curves if c.method == method), key=_per_problem_flops)
  if not theirs:
    return []
  rows = [r for r in rev_curves if r.method == _method(BEST)]
  out = []
  for n in sorted({r.params["n"] for r in rows}):
    bc, _ = balanced(n)
    for role, c in (("pure sequential", 1), ("balanced", bc)):
      pt = find(rows, BEST, n, c)
      if pt is None or (role == "balanced" and bc == 1):
        continue
      flops = _per_problem_flops(pt)
      other = next((o for o in theirs if _per_problem_flops(o) >= flops), theirs[-1])
      out.append({"budget": n, "revisions": {
          "chains": c, "length": pt.params["length"], "role": role,
          "accuracy": pt.accuracy, "ci": pt.ci, "flops_per_problem": flops},
          "search": {"method": method, "budget": other.budget_generations,
                     "accuracy": other.accuracy, "ci": other.ci,
                     "flops_per_problem": _per_problem_flops(other)},
          "search_flops_at_least": _per_problem_flops(other) >= flops,
          "comparison": _paired(pt, other, seed=seed).to_json()})
  return out


# --- gated revisions -------------------------------------------------------------------------


def gate(correct: np.ndarray, conf: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
  """Chains that revise only while the current answer's confidence is below ``tau``.

  ``correct``, ``conf``: (chains, L) of ungated chains. A chain's answers are sampled one after
  the other, each from its own key, so the gated chain is the ungated one cut after its first
  answer with confidence >= tau (or after L answers): its answers are exactly those, and it
  keeps that last one. Returns, per chain, whether the kept answer is correct and the
  generations it made (1..L: what the budget counts).
  """
  correct, conf = np.asarray(correct, bool), np.asarray(conf, np.float64)
  if correct.shape != conf.shape or correct.ndim != 2 or correct.shape[1] < 1:
    raise ValueError(f"correct {correct.shape} and conf {conf.shape}: expected the same "
                     "(chains, L) shape with L >= 1.")
  stop = conf >= tau
  stop[:, -1] = True
  kept = np.argmax(stop, axis=1)  # the first answer confident enough, else the last
  return correct[np.arange(len(kept)), kept], kept + 1


def choose_gate(correct: np.ndarray, conf: np.ndarray) -> dict:
  """The threshold of :func:`gate` that keeps the most correct answers on train chains
  (``correct``, ``conf``: (chains, L)); ties go to fewer generations, then the lower
  threshold. Candidates: never revising (-inf), every 5% quantile of the train confidences,
  always revising (+inf)."""
  conf = np.asarray(conf, np.float64)
  taus = [-np.inf] + sorted(set(np.quantile(conf, np.linspace(0.05, 0.95, 19)).tolist())) \
      + [np.inf]
  rows = []
  for tau in taus:
    ok, gens = gate(correct, conf, tau)
    rows.append({"tau": float(tau), "accuracy": float(ok.mean()),
                 "generations": float(gens.mean())})
  best = max(rows, key=lambda r: (r["accuracy"], -r["generations"], -r["tau"]))
  return {"tau": best["tau"], "train_accuracy": best["accuracy"],
          "train_generations": best["generations"], "train_chains": int(np.shape(conf)[0]),
          "length": int(np.shape(conf)[1]), "candidates": rows}


def train_chains(parts: Sequence[dict], measure) -> tuple[np.ndarray, np.ndarray]:
  """(chains, L) correctness and confidence (``measure``, a
  :class:`ttc_jax.verifiers.confidence.Measure`) of the revision ORM's train chains (its
  answer shards: :func:`ttc_jax.search.revisions.answers_arrays`)."""
  correct, conf = {}, {}
  for part in parts:
    for i in range(len(part["correct"])):
      key = (int(part["problem_index"][i]), int(part["chain"][i]))
      stats = np.asarray(part["token_stats"][i, :int(part["generated"][i])])
      correct.setdefault(key, []).append(bool(part["correct"][i]))
      conf.setdefault(key, []).append(measure.score(stats))
  lengths = {len(v) for v in correct.values()}
  if len(lengths) != 1:
    raise ValueError(f"the train chains have lengths {sorted(lengths)}; expected one length.")
  keys = list(correct)
  return np.asarray([correct[k] for k in keys], bool), np.asarray([conf[k] for k in keys])


def gated_chains(chains_by_seed: Sequence[dict], tau: float, budgets: Sequence[int],
                 curves_: Sequence[CurvePoint], seed: int = 0) -> list[dict]:
  """On the test chains: for every chain length L of ``budgets``, every stored chain of at
  least L answers gated by ``tau`` (chosen on train problems), per problem averaged over its
  chains and the seeds: the kept answer's accuracy, the generations made, the revisions made
  and how many turned a correct answer incorrect; against the chains' first answer and against
  parallel sampling (majority, and the confidence selection) at the smallest budget of at
  least the gated chains' mean generations, paired over problems."""
  _check(chains_by_seed)
  out = []
  for l in sorted(budgets):
    kept, gens, first, c2i, prev_correct = [], [], [], [], []
    for ch in chains_by_seed:
      mask = np.asarray(ch["mask"], bool)
      if "conf" not in ch:
        raise ValueError(f"seed {ch['seed']}: gated chains need each answer's confidence.")
      rows = [c for c in range(mask.shape[1]) if mask[:, c, :l].all()]
      if not rows:
        raise ValueError(f"seed {ch['seed']}: no stored chain has {l} answers.")
      correct = np.asarray(ch["correct"], bool)[:, rows, :l]
      conf = np.asarray(ch["conf"], np.float64)[:, rows, :l]
      p, c = correct.shape[:2]
      ok, g = gate(correct.reshape(p * c, l), conf.reshape(p * c, l), tau)
      kept.append(ok.reshape(p, c).mean(1))
      gens.append(g.reshape(p, c).mean(1))
      first.append(correct[:, :, 0].mean(1))
      # Revisions made: answer j + 1 exists in the gated chain when j + 1 < generations.
      made = np.arange(l - 1)[None, None] < (g.reshape(p, c) - 1)[:, :, None]
      c2i.append((made & correct[:, :, :-1] & ~correct[:, :, 1:]).sum((1, 2)))
      prev_correct.append((made & correct[:, :, :-1]).sum((1, 2)))
    kept, gens, first = (np.mean(x, axis=0) for x in (kept, gens, first))
    names = (f"gated chain (L={l})", "first answer")
    row = {"length": l, "accuracy": stats_lib.mean_ci(kept, seed=seed).to_json(),
           "generations": float(gens.mean()),
           "correct_to_incorrect": ratio_ci(np.sum(c2i, axis=0), np.sum(prev_correct, axis=0),
                                            seed),
           "vs_first": stats_lib.paired_diff(kept, first, names=names, seed=seed).to_json()}
    n = next((b for b in sorted(budgets) if b >= gens.mean()), None)
    for sel in ("majority", "hier_conf"):
      pt = find(curves_, sel, n, n) if n is not None else None
      row[f"vs_parallel_{sel}"] = None if pt is None else {
          "budget": n, **stats_lib.paired_diff(
              kept, pt.per_problem, names=(names[0], f"{sel} {n}x1"), seed=seed).to_json()}
    out.append(row)
  return out


def within_chain(curves_: Sequence[CurvePoint], seed: int = 0) -> list[dict]:
  """One chain of L answers (the 1 x L split) with each selection among its answers, against
  its first answer (the 1 x 1 split): paired over problems, for every L > 1 and selection."""
  first = find(curves_, "majority", 1, 1)
  out = []
  for sel in dict.fromkeys(registry.selection_of(p.method) for p in curves_
                           if registry.method(p.method).family == registry.REVISIONS):
    for pt in sorted((p for p in curves_ if p.method == _method(sel)
                      and p.params["chains"] == 1 and p.params["n"] > 1),
                     key=lambda p: p.params["n"]):
      cmp = _paired(pt, first, seed=seed)
      out.append({"selection": sel, "length": pt.params["n"], "accuracy": pt.accuracy,
                  "ci": list(pt.ci), "vs_first": None if cmp is None else cmp.to_json()})
  return out


def first_answer_vs_policy(chains_by_seed: Sequence[dict], policy_pass_at_1: np.ndarray,
                           seed: int = 0) -> dict:
  """The revision model's first answers (every chain's, averaged per problem over chains and
  seeds) against the policy's pass@1 on the same problems: does the fine-tune keep the policy
  it started from? A paired bootstrap over problems."""
  _check(chains_by_seed)
  first = np.mean([np.asarray(ch["correct"], bool)[:, :, 0].mean(axis=1)
                   for ch in chains_by_seed], axis=0)
  p1 = np.asarray(policy_pass_at_1, np.float64)
  if p1.shape != first.shape:
    raise ValueError(f"policy pass@1 has {p1.size} problems; the chains have {first.size}.")
  cmp = stats_lib.paired_diff(first, p1, names=("revision model's first answer",
                                                "policy pass@1"), seed=seed)
  return {"first_answer": float(first.mean()), "policy_pass_at_1": float(p1.mean()),
          "comparison": cmp.to_json()}


def _chosen_right(r: dict) -> np.ndarray | None:
  """(problems, answers) bool: whether each answer of the chains of a round's chosen
  checkpoint on its held-out train problems was right; None without a choice."""
  choice = r.get("checkpoint_choice")
  if not (choice and choice.get("curve") and "correct" in choice["curve"][0]):
    return None
  best = next(c for c in choice["curve"] if c["step"] == choice["step"])
  return np.asarray([[ch == "1" for ch in row_] for row_ in best["correct"]], bool)


def ablation_row(name: str, overrides: dict, rounds: Sequence[dict], pass_at_1: np.ndarray,
                 reference: dict | None = None, seed: int = 0) -> dict:
  """A row of the revision ablation: the revision model's last round as chosen on its
  held-out train problems (first and last answer of the chains, correct -> incorrect, with
  CIs over the problems) and its policy's pass@1 on the test problems; against
  ``reference`` (the study's row, same problems: its ``_right`` and ``_pass_at_1``), paired
  differences. Keys starting with '_' hold the arrays and are dropped from the JSON."""
  chosen = [(r, right) for r in rounds if (right := _chosen_right(r)) is not None]
  last, right = chosen[-1] if chosen else (None, None)
  p1 = np.asarray(pass_at_1, np.float64)
  row = {"name": name, "overrides": overrides, "rounds": len(rounds),
         "policy_pass_at_1": stats_lib.mean_ci(p1, seed=seed).to_json(),
         "_right": right, "_pass_at_1": p1}
  if right is not None:
    flips = (right[:, :-1] & ~right[:, 1:]).sum(1)
    row.update(step=int(last["checkpoint_choice"]["step"]),
               problems=last["checkpoint_choice"]["problems"],
               first=stats_lib.mean_ci(right[:, 0], seed=seed).to_json(),
               last=stats_lib.mean_ci(right[:, -1], seed=seed).to_json(),
               correct_to_incorrect=ratio_ci(flips, right[:, :-1].sum(1), seed))
  if reference is not None:
    ref_right = reference["_right"]
    if right is not None and ref_right is not None and ref_right.shape == right.shape:
      for key, i in (("first", 0), ("last", -1)):
        row[f"{key}_vs_reference"] = stats_lib.paired_diff(
            right[:, i], ref_right[:, i], names=(name, reference["name"]), seed=seed).to_json()
    if reference["_pass_at_1"].shape == p1.shape:
      row["pass_at_1_vs_reference"] = stats_lib.paired_diff(
          p1, reference["_pass_at_1"], names=(name, reference["name"]), seed=seed).to_json()
  return row


def training_rounds(rounds: Sequence[dict], seed: int = 0) -> list[dict]:
  """The revision model's rounds as chosen on held-out train problems (the revision model's
  ``made_by.data.rounds``; each with its ``checkpoint_choice``): per round, its chosen step's
  first and last answer accuracy and correct -> incorrect rate with CIs over the problems,
  its data, and its last answer against the previous round's (paired: same problems, same
  keys). Rounds without a choice are listed with their data only."""
  out, previous = [], None
  for r in rounds:
    own = r.get("own_data") or {}
    row = {"round": int(r["round"]), "trajectories": r.get("trajectories"),
           "policy_rows": r.get("policy_rows"), "own_trajectories": own.get("trajectories"),
           "own_keep_trajectories": own.get("keep_trajectories"),
           "own_accuracy_by_answer": own.get("chain_accuracy_by_answer"), "chosen": None}
    choice = r.get("checkpoint_choice")
    right = _chosen_right(r)
    if right is not None:
      flips = (right[:, :-1] & ~right[:, 1:]).sum(1)
      row["chosen"] = {
          "step": int(choice["step"]), "problems": choice["problems"],
          "first": stats_lib.mean_ci(right[:, 0], seed=seed).to_json(),
          "last": stats_lib.mean_ci(right[:, -1], seed=seed).to_json(),
          "correct_to_incorrect": ratio_ci(flips, right[:, :-1].sum(1), seed),
          "curve": [{"step": c["step"], "last": c["accuracy_by_answer"][-1],
                     "correct_to_incorrect": c.get("correct_to_incorrect")}
                    for c in choice["curve"]]}
      if previous is not None and previous.shape == right.shape:
        row["chosen"]["last_vs_previous_round"] = stats_lib.paired_diff(
            right[:, -1], previous[:, -1], names=(f"round {r['round']}",
                                                  f"round {r['round'] - 1}"),
            seed=seed).to_json()
      previous = right
    out.append(row)
  return out


def summary(chains_by_seed: Sequence[dict], budgets: Sequence[int], bins: np.ndarray,
            num_bins: int, search_curves: Sequence[CurvePoint] | None = None,
            seed: int = 0, policy_pass_at_1: np.ndarray | None = None,
            gate_choice: dict | None = None) -> dict:
  """Every revision result in one JSON-able dict (the cells: :func:`revision_cells`);
  ``gate_choice``: :func:`choose_gate` on train chains, for the gated chains."""
  budgets = sorted(_power_of_two(n, "budget") for n in budgets)
  pts = curves(revision_cells(chains_by_seed, budgets), bins, num_bins, seed)
  extra = {} if policy_pass_at_1 is None else {
      "first_answer": first_answer_vs_policy(chains_by_seed, policy_pass_at_1, seed)}
  if gate_choice is not None:
    extra["gated"] = {"gate": gate_choice, "chains": gated_chains(
        chains_by_seed, gate_choice["tau"], [n for n in budgets if n > 1], pts, seed)}
  return {**extra, "within_chain": within_chain(pts, seed),
          "curves": [p.to_json() for p in pts],
          # The paper's selection, then the revision model's confidence (no model call; the
          # selection that gained within chains in the study), then the single-answer
          # verifier's (revisions.verifier): the same claims, pre-specified.
          "claims": (revision_claims(pts, bins, num_bins, seed)
                     + revision_claims(pts, bins, num_bins, seed, "hier_conf")
                     + revision_claims(pts, bins, num_bins, seed, "hier_prm")),
          "transitions": transitions(chains_by_seed, seed),
          "best_ratio_by_bin": best_ratio_by_bin(pts, bins, num_bins),
          "vs_search": compare_to_search(pts, search_curves, seed),
          "vs_search_flops": compare_at_equal_flops(pts, search_curves, seed),
          "budgets": budgets, "selections": available(chains_by_seed),
          # flat_prm's verifier (revisions.verifier; a sweep made before the key: the PRM).
          "single_answer_verifier": str(chains_by_seed[0].get("single_answer_verifier", "prm")),
          "chain_lengths": chain_lengths(budgets[-1]), "num_bins": int(num_bins)}
