"""Sequential revisions analysis (paper section 6) on hand-made and synthetic chains."""

from __future__ import annotations

import numpy as np
import pytest

from ttc_jax.accounting import ModelCost
from ttc_jax.analysis import revisions as rev
from ttc_jax.analysis import study as study_lib
from ttc_jax.report import figures
from ttc_jax.report import markdown
from ttc_jax.search import registry
from ttc_jax.search.records import Cell
from ttc_jax.search.records import CurvePoint
from ttc_jax.search.records import Outcome


def make_chains(answers, correct=None, orm=None, prm=None, *, seed=0, uids=None,
                policy_tokens=None, prefix_tokens=None, orm_tokens=None, prm_tokens=None,
                policy_cost=(10, 1, 1), orm_cost=(3, 1, 2), prm_cost=(5, 2, 1), wall_s=8.0):
  """A chains dict from ragged per problem, per chain lists (None entries of ``answers``
  are answers without a final answer; a shorter list: the chain stops there). The costs:
  (params, num_layers, attn_width) of each model, stored as ModelCost.to_dict()."""
  p = len(answers)
  cmax = max(len(a) for a in answers)
  lmax = max(len(ch) for a in answers for ch in a)
  shape = (p, cmax, lmax)

  def fill(values, dtype, default):
    out = np.full(shape, default, dtype)
    if values is None:
      return out
    for i, per_problem in enumerate(values):
      for c, chain in enumerate(per_problem):
        for l, v in enumerate(chain):
          out[i, c, l] = v
    return out

  mask = np.zeros(shape, bool)
  for i, per_problem in enumerate(answers):
    for c, chain in enumerate(per_problem):
      mask[i, c, :len(chain)] = True
  ans = np.empty(shape, object)
  for i, per_problem in enumerate(answers):
    for c, chain in enumerate(per_problem):
      for l, a in enumerate(chain):
        ans[i, c, l] = a
  return {"problems": uids or [f"q{i}" for i in range(p)], "mask": mask,
          "correct": fill(correct, bool, False) & mask, "answers": ans,
          "orm": fill(orm, np.float64, 0.5), "prm": fill(prm, np.float64, 0.5),
          "policy_tokens": fill(policy_tokens, np.int64, 1),
          "prefix_tokens": np.asarray(prefix_tokens if prefix_tokens is not None else [0] * p,
                                      np.int64),
          "orm_tokens": fill(orm_tokens, np.int64, 1), "prm_tokens": fill(prm_tokens, np.int64, 1),
          **{f"{role}_cost": ModelCost(*cost).to_dict() for role, cost in (
              ("policy", policy_cost), ("orm", orm_cost), ("prm", prm_cost))},
          "wall_s": wall_s, "seed": seed}


def random_chains(num_problems, max_n, seed, rng_seed=0):
  """Random synthetic chains over every split up to ``max_n`` (problem i's reference is
  'r'; easier problems give it more often)."""
  rng = np.random.default_rng(rng_seed * 1000 + seed)
  lengths = rev.chain_lengths(max_n)
  answers, correct, orm, prm, toks = [], [], [], [], []
  for i in range(num_problems):
    p_right = 0.9 - 0.8 * i / max(1, num_problems - 1)
    a_i, c_i, o_i, r_i, t_i = [], [], [], [], []
    for length in lengths:
      right = rng.random(length) < p_right
      a = ["r" if r else rng.choice(["x", "y", None]) for r in right]
      a_i.append(a)
      c_i.append([x == "r" for x in a])
      o_i.append(np.clip(0.5 + 0.3 * (right - 0.5) + 0.2 * rng.normal(size=length), 0.01, 0.99))
      r_i.append(rng.random(length))
      t_i.append(rng.integers(5, 20, length))
    answers.append(a_i)
    correct.append(c_i)
    orm.append(o_i)
    prm.append(r_i)
    toks.append(t_i)
  return make_chains(answers, correct, orm, prm, seed=seed, policy_tokens=toks,
                     prefix_tokens=rng.integers(3, 9, num_problems), wall_s=10.0 + seed)


def test_splits_and_chain_lengths():
  assert rev.splits(1) == [(1, 1)]
  assert rev.splits(2) == [(2, 1), (1, 2)]
  assert rev.splits(4) == [(4, 1), (2, 2), (1, 4)]
  assert rev.splits(8) == [(8, 1), (4, 2), (2, 4), (1, 8)]
  assert rev.splits(16) == [(16, 1), (8, 2), (4, 4), (2, 8), (1, 16)]
  assert rev.chain_lengths(1) == [1]
  assert rev.chain_lengths(2) == [2, 1]
  assert rev.chain_lengths(4) == [4, 2, 1, 1]
  assert rev.chain_lengths(8) == [8, 4, 2, 2, 1, 1, 1, 1]
  assert rev.chain_lengths(16) == [16, 8, 4, 4] + [2] * 4 + [1] * 8
  for bad in (0, 3, 6, -4, 2.0, True):
    with pytest.raises(ValueError, match=rf"max_n={bad!r}: expected a power of two"):
      rev.chain_lengths(bad)
  with pytest.raises(ValueError, match="n=12"):
    rev.splits(12)
  assert [rev.balanced(n) for n in (1, 2, 4, 8, 16, 32)] == [
      (1, 1), (1, 2), (2, 2), (2, 4), (4, 4), (4, 8)]


# One problem, split 2 chains x 4 answers, where every selection picks another answer.
POOL = dict(
    answers=[[["a", "a", "b", "d"], ["a", "c", "c", "d"]]],
    correct=[[[False, False, False, True], [False, False, False, True]]],
    orm=[[[0.1, 0.1, 0.9, 0.2], [0.1, 0.5, 0.5, 0.45]]],
    prm=[[[0.1, 0.1, 0.1, 0.9], [0.1, 0.1, 0.1, 0.9]]])


def test_each_selection_picks_its_own_answer():
  ch = make_chains(**POOL)
  a, o, p = ch["answers"][0], ch["orm"][0], ch["prm"][0]
  # majority: a x3; flat ORM sums: a .3, b .9, c 1.0, d .65; chain winners b (.9), c (.5);
  # flat PRM sums: d 1.8.
  assert rev.select(a, o, p, "majority") == "a"
  assert rev.select(a, o, p, "flat_orm") == "c"
  assert rev.select(a, o, p, "hier_orm") == "b"
  assert rev.select(a, o, p, "flat_prm") == "d"
  with pytest.raises(ValueError, match="selection 'best'"):
    rev.select(a, o, p, "best")
  # Through the cells: only d is marked correct, so only the verifier's choices (flat_prm,
  # and hier_prm: both chains' best is d) are right.
  cells = [c for c in rev.revision_cells([_full(ch, 8)], [8])
           if c.params == {"n": 8, "chains": 2, "length": 4}]
  got = {c.method: (c.outcomes[0].answer, c.outcomes[0].correct) for c in cells}
  assert got == {"revisions_majority": ("a", 0), "revisions_flat_orm": ("c", 0),
                 "revisions_hier_orm": ("b", 0), "revisions_flat_prm": ("d", 1),
                 "revisions_hier_prm": ("d", 1)}


def test_hierarchical_prm_selection_takes_each_chain_s_best_by_the_single_answer_verifier():
  # Two chains of 3. The single-answer verifier's pooled sums: a .9, b .95, c .9, so flat_prm
  # takes b; each chain's best: chain 0 b (.5), chain 1 c (.9, before b's .45), so hier_prm
  # takes c (.9 > .5). Ties within a chain go to the earlier answer (chain 0's a at .5).
  ch = make_chains(answers=[[["a", "a", "b"], ["c", "a", "b"]]],
                   correct=[[[False, False, False], [True, False, False]]],
                   orm=[[[0.0] * 3, [0.0] * 3]], prm=[[[0.4, 0.4, 0.5], [0.9, 0.1, 0.45]]])
  a, o, p = ch["answers"][0], ch["orm"][0], ch["prm"][0]
  assert rev.select(a, o, p, "flat_prm") == "b"
  assert rev.select(a, o, p, "hier_prm") == "c"
  tied = np.array([[0.5, 0.1, 0.5], [0.1, 0.1, 0.1]])
  assert rev.select(a, o, tied, "hier_prm") == "a"
  # One chain: its answer with the verifier's highest score (the within-chain selection).
  assert rev.select(a[1:], o[1:], p[1:], "hier_prm") == "c"
  assert rev.select(a[:1], o[:1], p[:1], "hier_prm") == "b"
  # An answer without a final answer never wins, however high its score; a chain of only
  # such answers gives none.
  holes = np.array([["a", None, "b"], [None, None, None]], object)
  scores = np.array([[0.1, 0.99, 0.5], [0.9, 0.9, 0.9]])
  assert rev.select(holes, o, scores, "hier_prm") == "b"
  assert rev.select(holes[1:], o[1:], scores[1:], "hier_prm") is None
  # Through the cells: hier_prm is right where flat_prm is not, and it is charged the
  # verifier's FLOPs as flat_prm is.
  cells = {c.method: c.outcomes[0] for c in rev.revision_cells([_full(ch, 8)], [8])
           if c.params == {"n": 8, "chains": 2, "length": 4}}
  assert (cells["revisions_hier_prm"].answer, cells["revisions_hier_prm"].correct) == ("c", 1)
  assert (cells["revisions_flat_prm"].answer, cells["revisions_flat_prm"].correct) == ("b", 0)
  assert cells["revisions_hier_prm"].prm_flops == cells["revisions_flat_prm"].prm_flops > 0


def test_confidence_selections_read_each_answer_s_confidence_and_run_no_verifier():
  # Confidences: chain 0 winner d (.8), chain 1 winner c (.7); pooled sums a .3, b .1,
  # c 1.3, d 1.0. Answers 'a' majority; conf flat: c; conf hierarchical: d (.8 > .7).
  ch = make_chains(**POOL)
  conf = np.array([[[0.1, 0.1, 0.1, 0.8], [0.1, 0.7, 0.6, 0.2]]])
  a, o, p = ch["answers"][0], ch["orm"][0], ch["prm"][0]
  assert rev.select(a, o, p, "flat_conf", conf[0]) == "c"
  assert rev.select(a, o, p, "hier_conf", conf[0]) == "d"
  with pytest.raises(ValueError, match="needs each answer's confidence"):
    rev.select(a, o, p, "hier_conf")
  # Chains without confidences have no confidence cells (and asking for one is named).
  assert rev.available([ch]) == ["majority", "flat_orm", "hier_orm", "flat_prm", "hier_prm"]
  with pytest.raises(ValueError, match="the chains hold no .conf. scores"):
    rev.revision_cells([_full(ch, 8)], [8], selections=["flat_conf"])
  with_conf = _full(dict(ch, conf=conf), 8)
  cells = {c.method: c for c in rev.revision_cells([with_conf], [8])
           if c.params == {"n": 8, "chains": 2, "length": 4}}
  assert set(cells) == {f"revisions_{s}" for s in rev.SELECTIONS}
  assert cells["revisions_hier_conf"].outcomes[0].answer == "d"
  assert cells["revisions_hier_conf"].outcomes[0].correct == 1
  assert cells["revisions_flat_conf"].outcomes[0].answer == "c"
  # They cost the revision model's tokens only, as majority does: no verifier runs.
  for s in ("flat_conf", "hier_conf"):
    got, maj = cells[f"revisions_{s}"].outcomes[0], cells["revisions_majority"].outcomes[0]
    assert got.prm_flops == 0 and got.prm_tokens == 0 and got.flops == maj.flops
  assert cells["revisions_hier_orm"].outcomes[0].prm_flops > 0


def _full(ch, max_n):
  """``ch`` with every answer the splits of ``max_n`` need that it lacks added as a wrong
  answer 'z' (scores 0, one token each)."""
  lengths = rev.chain_lengths(max_n)
  p, cmax, lmax = ch["mask"].shape
  shape = (p, len(lengths), max(lengths[0], lmax))
  out = dict(ch)
  for k in ("mask", "correct", "answers", "orm", "prm", "policy_tokens", "orm_tokens",
            "prm_tokens") + (("conf",) if "conf" in ch else ()):
    new = np.zeros(shape, ch[k].dtype)
    new[:, :cmax, :lmax] = ch[k]
    out[k] = new
  need = np.zeros(shape, bool)
  for c, length in enumerate(lengths):
    need[:, c, :length] = True
  add = need & ~out["mask"]
  out["mask"] = out["mask"] | add
  out["answers"][add] = "z"
  for k in ("policy_tokens", "orm_tokens", "prm_tokens"):
    out[k][add] = 1
  return out


def test_hierarchical_ties_and_missing_answers():
  # Chain 0: a tie between x (first) and y: x is the chain's winner; a None answer with the
  # highest score is not eligible. Chain 1: only None: it gives no winner.
  answers = np.array([["x", "y", None], [None, None, None]], object)
  orm = np.array([[0.6, 0.6, 0.99], [0.9, 0.9, 0.9]])
  assert rev.select(answers, orm, orm, "hier_orm") == "x"
  assert rev.select(answers[::-1], orm[::-1], orm, "hier_orm") == "x"
  assert rev.select(np.array([[None, None]], object), orm[:1, :2], orm[:1, :2],
                    "hier_orm") is None
  # None never wins the pooled votes either, however many or high-scored.
  pooled = np.array([[None, None, "k"]], object)
  for sel in ("majority", "flat_orm", "flat_prm"):
    assert rev.select(pooled, np.array([[0.9, 0.9, 0.1]]), np.array([[0.9, 0.9, 0.1]]),
                      sel) == "k"


def _fwd(params, layers, width, start, stop):
  """Forward FLOPs of positions [start, stop), summed token by token (2N + 4 L d (t + 1))."""
  return sum(2 * params + 4 * layers * width * (t + 1) for t in range(start, stop))


def test_tokens_flops_and_wall_time_are_exact():
  # Two problems, max_n = 2: chain 0 has 2 answers, chain 1 one answer.
  pol, orm, prm = (10, 1, 1), (3, 1, 2), (5, 2, 1)
  ch = make_chains(
      answers=[[["a", "b"], ["b"]], [[None, "c"], ["c"]]],
      correct=[[[True, False], [False]], [[False, True], [True]]],
      policy_tokens=[[[10, 20], [30]], [[1, 2], [4]]], prefix_tokens=[100, 7],
      orm_tokens=[[[5, 6], [7]], [[1, 1], [1]]], prm_tokens=[[[50, 60], [70]], [[2, 2], [2]]],
      policy_cost=pol, orm_cost=orm, prm_cost=prm, wall_s=6.0, seed=4)
  # As stored: the cells' JSON.
  cells = {c.key: c.to_json() for c in rev.revision_cells([ch], [1, 2])}
  assert len(cells) == 5 * 3  # 5 selections (no confidences) x 3 splits

  def policy_flops(prefix, answers):
    """The prefix once from position 0, every answer (extension + generated) after it."""
    return _fwd(*pol, 0, prefix) + sum(_fwd(*pol, prefix, prefix + a) for a in answers)

  def check_flops(cell, policy, verifier):
    assert cell["policy_flops"] == pytest.approx(policy, rel=1e-12)
    assert cell["prm_flops"] == pytest.approx(verifier, rel=1e-12)
    assert cell["flops"] == pytest.approx([a + b for a, b in zip(policy, verifier)], rel=1e-12)

  one = cells["revisions_majority/chains=1,length=1,n=1/seed=4"]
  assert one["policy_tokens"] == [110, 8] and one["prm_tokens"] == [0, 0]
  check_flops(one, [policy_flops(100, [10]), policy_flops(7, [1])], [0, 0])
  # Attention counts: more than 2 x params x tokens, by the quadratic term.
  assert one["flops"][0] == 2 * 10 * 110 + 2 * 1 * 1 * 110 * 111
  assert one["finished"] == [1, 0] and one["answers"] == ["a", None]
  assert one["correct"] == [1, 0]
  assert one["wall_s"] == pytest.approx(6.0 * 2 / 6) and one["compile_s"] == 0.0
  par = cells["revisions_flat_orm/chains=2,length=1,n=2/seed=4"]
  # The question prefix is counted once per problem, not once per chain.
  assert par["policy_tokens"] == [140, 12] and par["prm_tokens"] == [12, 2]
  # The ORM reads each answer's whole sequence from position 0.
  check_flops(par, [policy_flops(100, [10, 30]), policy_flops(7, [1, 4])],
              [_fwd(*orm, 0, 5) + _fwd(*orm, 0, 7), 2 * _fwd(*orm, 0, 1)])
  assert par["params"] == {"n": 2, "chains": 2, "length": 1}
  assert par["budget_generations"] == 2 and par["method"] == "revisions_flat_orm"
  assert par["finished"] == [2, 1] and par["problems"] == ["q0", "q1"]
  assert par["wall_s"] == pytest.approx(6.0 * 4 / 6)
  seq = cells["revisions_flat_prm/chains=1,length=2,n=2/seed=4"]
  assert seq["policy_tokens"] == [130, 10] and seq["prm_tokens"] == [110, 4]
  check_flops(seq, [policy_flops(100, [10, 20]), policy_flops(7, [1, 2])],
              [_fwd(*prm, 0, 50) + _fwd(*prm, 0, 60), 2 * _fwd(*prm, 0, 2)])
  hier = cells["revisions_hier_orm/chains=1,length=2,n=2/seed=4"]
  assert hier["prm_tokens"] == [11, 2]
  # 'c' is correct somewhere in the pool, so choosing it is right.
  assert hier["answers"][1] == "c" and hier["correct"][1] == 1
  assert seq["wall_s"] == pytest.approx(6.0 * 4 / 6)


def test_chains_without_model_costs_fail_clearly():
  """Chains stored before the FLOPs counted attention hold only bare parameter counts."""
  ch = make_chains([[["a"]]])
  old = {k: v for k, v in ch.items() if not k.endswith("_cost")}
  old.update(policy_params=10, orm_params=3, prm_params=5)
  with pytest.raises(ValueError, match=r"lack 'policy_cost'.*re-run the revision sweep"):
    rev.revision_cells([old], [1])
  with pytest.raises(ValueError, match=r"model cost .*expected a dict with exactly the keys"):
    rev.revision_cells([{**ch, "orm_cost": {"params": 3}}], [1])


def test_a_split_needing_a_missing_answer_raises():
  # max_n = 4 needs chain lengths [4, 2, 1, 1]; chain 1 of problem 'hard' has one answer.
  answers = [[["a"] * 4, ["a", "a"], ["a"], ["a"]], [["a"] * 4, ["a"], ["a"], ["a"]]]
  ch = make_chains(answers, uids=["easy", "hard"], seed=2)
  rev.revision_cells([ch], [1, 2])
  with pytest.raises(ValueError, match=r"seed 2: the split 2 chains x 2 answers needs answer 1 "
                     r"\(0-based step\) of chain 1 of problem 'hard'"):
    rev.revision_cells([ch], [4])
  with pytest.raises(ValueError, match="needs more than the stored 4 chains x 4 answers"):
    rev.revision_cells([ch], [8])
  with pytest.raises(ValueError, match="budget=3"):
    rev.revision_cells([ch], [3])
  other = make_chains(answers, uids=["hard", "easy"], seed=5)
  with pytest.raises(ValueError, match="seed 5 are on other problems"):
    rev.revision_cells([ch, other], [1])


def test_transitions_count_known_chains():
  # right, wrong, right, right: of the 2 correct predecessors 1 turns wrong; of the 1
  # incorrect one, 1 turns right.
  one = make_chains([[["r", "w", "r", "r"]]], [[[True, False, True, True]]])
  t = rev.transitions([one])
  c2i, i2c = t["pooled"]["correct_to_incorrect"], t["pooled"]["incorrect_to_correct"]
  assert (c2i["count"], c2i["of"], c2i["rate"]) == (1, 2, 0.5)
  assert (i2c["count"], i2c["of"], i2c["rate"]) == (1, 1, 1.0)
  assert [s["step"] for s in t["by_step"]] == [1, 2, 3]
  assert [s["correct_to_incorrect"]["rate"] for s in t["by_step"]] == [1.0, None, 0.0]
  assert [s["incorrect_to_correct"]["rate"] for s in t["by_step"]] == [None, 1.0, None]
  assert [a["rate"] for a in t["accuracy_by_step"]] == [1.0, 0.0, 1.0, 1.0]
  # A second seed (wrong, wrong; a one-answer second chain) pools into the counts.
  two = make_chains([[["w", "w", "w", "w"], ["r"]]], [[[False] * 4, [True]]], seed=1)
  t = rev.transitions([one, two])
  i2c = t["pooled"]["incorrect_to_correct"]
  assert (i2c["count"], i2c["of"]) == (1, 4)
  assert t["accuracy_by_step"][0]["count"] == 2 and t["accuracy_by_step"][0]["of"] == 3
  # Over several problems the interval is a bootstrap over problems, deterministic by seed.
  many = make_chains([[["r", "w"]], [["r", "r"]], [["r", "w"]], [["r", "r"]], [["w", "r"]]],
                     [[[True, False]], [[True, True]], [[True, False]], [[True, True]],
                      [[False, True]]])
  t = rev.transitions([many], seed=3)
  c2i = t["pooled"]["correct_to_incorrect"]
  assert (c2i["count"], c2i["of"], c2i["rate"], c2i["problems"]) == (2, 4, 0.5, 4)
  assert 0.0 <= c2i["ci"][0] < 0.5 < c2i["ci"][1] <= 1.0
  assert rev.transitions([many], seed=3) == t


def _pt(c, l, per_problem, sel="hier_orm"):
  acc = float(np.mean(per_problem))
  return CurvePoint(method=registry.name_of(registry.REVISIONS, selection=sel),
                    params={"n": c * l, "chains": c, "length": l}, budget_generations=c * l,
                    per_problem=list(map(float, per_problem)), accuracy=acc, ci=[acc, acc],
                    accuracy_by_bin=[], ci_by_bin=[], flops=0.0)


def test_revision_claims_verdicts():
  bins = np.repeat(np.arange(4), 5)  # 20 problems; easy: bins 0, 1; hard: bins 2, 3
  par = np.zeros(20)
  seq = np.concatenate([np.zeros(10), np.tile([1.0, 0.0], 5)])
  bal = np.concatenate([np.ones(10), np.tile([0.0, 1.0], 5)])
  curves = [_pt(4, 1, par), _pt(2, 2, bal), _pt(1, 4, seq),
            # A smaller budget and another selection: never the claims' points.
            _pt(2, 1, np.ones(20)), _pt(1, 2, np.zeros(20)), _pt(1, 4, par, "majority")]
  got = {c["claim"]: c for c in rev.revision_claims(curves, bins, 4, seed=0)}
  assert list(got) == [
      "(d) sequential revisions over parallel sampling at budget 4",
      "(d) pure sequential over the balanced ratio (2x2) on the easier half at budget 4",
      "(d) the balanced ratio (2x2) over pure sequential on the harder half at budget 4"]
  first, easy_c, hard_c = got.values()
  # seq - par: 0 on the easy half, 1, 0, 1, 0 ... on the hard half (mean 0.25 > 0).
  assert first["verdict"] == "reproduced" and first["comparison"]["diff"] == 0.25
  assert first["budget"] == 4 and first["selection"] == "hier_orm"
  assert easy_c["verdict"] == "not reproduced" and easy_c["comparison"]["diff"] == -1.0
  assert easy_c["comparison"]["n"] == 10
  assert hard_c["verdict"] == "not significant" and hard_c["comparison"]["diff"] == 0.0
  # Budget 2: the balanced split is pure sequential, so only one claim; budget 1: none.
  two = rev.revision_claims([_pt(2, 1, np.zeros(20)), _pt(1, 2, np.ones(20))], bins, 4)
  assert [c["claim"] for c in two] == [
      "(d) sequential revisions over parallel sampling at budget 2"]
  assert two[0]["verdict"] == "reproduced"
  assert rev.revision_claims([_pt(1, 1, np.ones(20))], bins, 4) == []
  assert rev.revision_claims([_pt(1, 4, seq, "majority")], bins, 4) == []
  # The same claims under the revision model's confidence selection name it, and read its
  # points only.
  conf = [_pt(4, 1, par, "hier_conf"), _pt(2, 2, bal, "hier_conf"), _pt(1, 4, par, "hier_conf")]
  got = rev.revision_claims(curves + conf, bins, 4, seed=0, selection="hier_conf")
  assert [c["claim"] for c in got] == [
      "(d) sequential revisions over parallel sampling at budget 4 (selected by hier_conf)",
      "(d) pure sequential over the balanced ratio (2x2) on the easier half at budget 4 "
      "(selected by hier_conf)",
      "(d) the balanced ratio (2x2) over pure sequential on the harder half at budget 4 "
      "(selected by hier_conf)"]
  assert [c["selection"] for c in got] == ["hier_conf"] * 3
  assert got[0]["comparison"]["diff"] == 0.0 and got[0]["verdict"] == "not significant"
  assert got[2]["comparison"]["diff"] == 0.5  # bal - par on the hard half


def test_summarize_works_on_revision_cells_and_best_ratio():
  chains = [random_chains(12, 4, s) for s in (0, 1)]
  cells = rev.revision_cells(chains, [1, 2, 4])
  assert len(cells) == 2 * 5 * (1 + 2 + 3)
  assert len({c.key for c in cells}) == len(cells)
  bins = np.repeat(np.arange(3), 4)
  pts = rev.curves(cells, bins, 3, seed=0)
  assert len(pts) == 5 * 6
  for p in pts:
    assert p.seeds == [0, 1]
    assert p.ci[0] <= p.accuracy <= p.ci[1]
    mine = [c for c in cells if c.method == p.method and c.params == p.params]
    assert p.accuracy == pytest.approx(np.mean([c.column("correct") for c in mine]))
    assert p.flops == pytest.approx(np.mean([np.sum(c.column("flops")) for c in mine]))
  best = rev.best_ratio_by_bin(pts, bins, 3)
  assert [b["budget"] for b in best] == [1, 2, 4]
  for b in best[-1]["bins"]:
    accs = [rev.find(pts, "hier_orm", 4, c).accuracy_by_bin[b["bin"]] for c in (4, 2, 1)]
    assert b["accuracy"] == max(accs)
    assert b["chains"] * b["length"] == 4 and b["ratio"] == b["length"] / b["chains"]
    assert b["ci"][0] <= b["accuracy"] <= b["ci"][1]


def _search_curves(num_problems, bins, num_bins):
  rng = np.random.default_rng(7)
  cells = []
  for method, budgets in (("best_of_n_weighted", (1, 2, 4)), ("beam_sqrt", (4,)),
                          ("beam_m2", (2, 4))):
    for n in budgets:
      for s in (0, 1):
        correct = rng.integers(0, 2, num_problems)
        cells.append(Cell(method=method, params={"n": n}, seed=s, budget_generations=n,
                          outcomes=tuple(Outcome(
                              problem=f"q{i}", correct=int(correct[i]), answer=None, finished=1,
                              policy_tokens=10, prm_tokens=5, flops=100.0 * n,
                              policy_flops=100.0 * n, prm_flops=0.0)
                                         for i in range(num_problems)), wall_s=1.0))
  return [study_lib.summarize(p, bins, num_bins) for p in study_lib.points(cells)]


def test_compare_to_search_rows():
  bins = np.repeat(np.arange(3), 4)
  pts = rev.curves(rev.revision_cells([random_chains(12, 4, 0)], [1, 2, 4]), bins, 3)
  search = _search_curves(12, bins, 3)
  rows = rev.compare_to_search(pts, search, seed=0)
  got = [(r["budget"], r["revisions"]["chains"], r["revisions"]["role"], r["search"]["method"])
         for r in rows]
  assert got == [(1, 1, "pure sequential = balanced", "best_of_n_weighted"),
                 (2, 1, "pure sequential = balanced", "best_of_n_weighted"),
                 (2, 1, "pure sequential = balanced", "beam_m2"),
                 (4, 1, "pure sequential", "best_of_n_weighted"),
                 (4, 1, "pure sequential", "beam_m2"),
                 (4, 2, "balanced", "best_of_n_weighted"), (4, 2, "balanced", "beam_m2")]
  r = rows[3]
  mine = rev.find(pts, "hier_orm", 4, 1)
  theirs = study_lib.point(search, "best_of_n_weighted", 4)
  assert r["comparison"]["diff"] == pytest.approx(mine.accuracy - theirs.accuracy)
  assert r["search"]["flops_per_problem"] == 400.0
  assert r["revisions"]["flops_per_problem"] == pytest.approx(mine.flops / 12)
  assert rev.compare_to_search(pts, None) == []


def test_the_first_answer_and_one_chain_s_selections_are_compared_paired():
  # 4 problems, one chain of 4 answers each: the first answer is right on problem 0 only;
  # the last answer is right everywhere and the most confident one.
  answers = [[["r" if i == 0 else "x", "x", "y", "r"]] for i in range(4)]
  correct = [[[a == "r" for a in ch[0]]] for ch in answers]
  ch = make_chains(answers, correct, seed=0)
  ch["conf"] = np.tile([0.2, 0.1, 0.3, 0.9], (4, 1, 1))
  first = rev.first_answer_vs_policy([ch], np.array([1.0, 1.0, 0.0, 0.0]))
  assert first["first_answer"] == 0.25 and first["policy_pass_at_1"] == 0.5
  assert first["comparison"]["diff"] == -0.25 and first["comparison"]["n"] == 4
  with pytest.raises(ValueError, match="policy pass@1 has 3 problems; the chains have 4"):
    rev.first_answer_vs_policy([ch], np.ones(3))
  bins = np.arange(4) % 2
  ch = _full(ch, 4)  # the other splits' chains: wrong answers 'z'
  pts = rev.curves(rev.revision_cells([ch], [1, 2, 4]), bins, 2)
  got = {(w["selection"], w["length"]): w for w in rev.within_chain(pts)}
  # L = 4: confidence picks the last answer (right on all 4): +0.75 over the first answer;
  # majority: x (x, x, y, r) on problems 1-3, r (r, x, y, r) on problem 0: as the first answer.
  assert got[("hier_conf", 4)]["accuracy"] == 1.0
  assert got[("hier_conf", 4)]["vs_first"]["diff"] == 0.75
  assert got[("majority", 4)]["vs_first"]["diff"] == 0.0
  assert {w["length"] for w in got.values()} == {2, 4}
  assert {s for s, _ in got} == set(rev.SELECTIONS)
  lines = "\n".join(markdown.revisions_section(rev.summary(
      [ch], [1, 2, 4], bins, 2, policy_pass_at_1=np.array([1.0, 1.0, 0.0, 0.0])), []))
  # Every chain's first answer: problem 0 right in 1 of its 4 chains.
  assert "first answer (every chain's, per problem) 0.062 against the policy's pass@1 0.500 " \
         "on the same problems: -0.438" in lines
  assert "| hier_conf | 4 | 1.000 [1.000, 1.000] | +0.750" in lines


def test_a_gated_chain_stops_at_its_first_confident_answer_and_counts_what_it_made():
  correct = np.array([[False, True, False], [True, False, False], [False, False, False]])
  conf = np.array([[0.1, 0.8, 0.9], [0.9, 0.1, 0.1], [0.1, 0.2, 0.3]])
  ok, gens = rev.gate(correct, conf, 0.5)
  # Chain 0 revises once and keeps its second (right) answer; chain 1 keeps its first; chain
  # 2 never gets confident: all 3 answers, the last kept.
  assert ok.tolist() == [True, True, False] and gens.tolist() == [2, 1, 3]
  assert rev.gate(correct, conf, -np.inf)[1].tolist() == [1, 1, 1]
  assert rev.gate(correct, conf, np.inf)[0].tolist() == correct[:, -1].tolist()
  with pytest.raises(ValueError, match="expected the same"):
    rev.gate(correct, conf[:, :2], 0.5)
  # The threshold that keeps most correct answers on these (train) chains; ties: fewer
  # generations. Here any threshold in (0.1, 0.8] keeps 2 of 3.
  choice = rev.choose_gate(correct, conf)
  assert choice["train_accuracy"] == pytest.approx(2 / 3) and 0.1 < choice["tau"] <= 0.8
  assert choice["length"] == 3 and choice["train_chains"] == 3
  # Always-right first answers: never revising wins (one generation).
  assert rev.choose_gate(np.ones((4, 3), bool), np.random.default_rng(0).random((4, 3)))[
      "tau"] == -np.inf


def test_gated_test_chains_use_the_train_threshold_and_compare_at_equal_generations():
  chains = [random_chains(12, 8, 0)]
  rng = np.random.default_rng(3)
  chains[0]["conf"] = rng.random(chains[0]["mask"].shape)
  bins = np.repeat(np.arange(3), 4)
  pts = rev.curves(rev.revision_cells(chains, [1, 2, 4, 8]), bins, 3)
  rows = rev.gated_chains(chains, 0.5, [2, 4, 8], pts)
  assert [r["length"] for r in rows] == [2, 4, 8]
  for r in rows:
    assert 1 <= r["generations"] <= r["length"]
    assert r["vs_first"]["n"] == 12
    par = r["vs_parallel_majority"]
    assert par is None or par["budget"] >= r["generations"]
  # Threshold +inf: the ungated chains (their last answers); -inf: their first answers.
  last = rev.gated_chains(chains, np.inf, [4], pts)[0]
  assert last["generations"] == 4
  ch = chains[0]
  full = [c for c in range(ch["mask"].shape[1]) if ch["mask"][:, c, :4].all()]
  assert last["accuracy"]["mean"] == pytest.approx(ch["correct"][:, full, 3].mean())
  first = rev.gated_chains(chains, -np.inf, [4], pts)[0]
  assert first["generations"] == 1 and first["vs_first"]["diff"] == 0
  assert first["correct_to_incorrect"]["of"] == 0


def test_the_gate_s_train_chains_come_from_the_orm_shards():
  from ttc_jax.verifiers.confidence import Measure
  # Two shards: problem 5's chains 0 and 1 (2 answers each), problem 9's chain 0.
  def part(problems, chains, steps, correct, logprobs):
    n = len(problems)
    stats = np.zeros((n, 3, 3), np.float32)
    stats[:, :2, 0] = np.asarray(logprobs)[:, None]
    return {"problem_index": np.asarray(problems), "chain": np.asarray(chains),
            "step": np.asarray(steps), "correct": np.asarray(correct),
            "generated": np.full(n, 2), "token_stats": stats}
  parts = [part([5, 5, 5, 5], [0, 0, 1, 1], [0, 1, 0, 1], [0, 1, 1, 1], [-1, -0.1, -2, -3]),
           part([9, 9], [0, 0], [0, 1], [1, 0], [-0.5, -0.5])]
  correct, conf = rev.train_chains(parts, Measure("logprob", "mean"))
  assert correct.tolist() == [[False, True], [True, True], [True, False]]
  np.testing.assert_allclose(conf, np.exp([[-1, -0.1], [-2, -3], [-0.5, -0.5]]), rtol=1e-6)
  with pytest.raises(ValueError, match="lengths \\[1, 2\\]"):
    rev.train_chains([parts[0], {k: v[:1] for k, v in parts[1].items()}],
                     Measure("logprob", "mean"))


def test_figures_and_report_section_render(tmp_path):
  num_bins = 3
  bins = np.repeat(np.arange(num_bins), 4)
  chains = [random_chains(12, 8, s) for s in (0, 1)]
  out = rev.summary(chains, [1, 2, 4, 8], bins, num_bins,
                    _search_curves(12, bins, num_bins), seed=0)
  assert set(out) >= {"curves", "claims", "transitions", "best_ratio_by_bin", "vs_search",
                      "budgets", "selections", "chain_lengths"}
  assert out["chain_lengths"] == [8, 4, 2, 2, 1, 1, 1, 1] and out["budgets"] == [1, 2, 4, 8]
  # The three (d) claims with hier_orm, then with hier_prm (the chains hold no confidences).
  assert [c["selection"] for c in out["claims"]] == ["hier_orm"] * 3 + ["hier_prm"] * 3
  assert out["vs_search"]
  import json
  json.dumps(out)  # JSON-able (NaN allowed, as in results.json)
  names = []
  for name, fn in (("revisions_vs_budget.png", figures.revisions_vs_budget),
                   ("revisions_by_difficulty.png", figures.revisions_by_difficulty),
                   ("revision_transitions.png", figures.revision_transitions)):
    fig = fn(out)
    fig.savefig(tmp_path / name)
    assert (tmp_path / name).stat().st_size > 1000
    names.append(name)
  lines = markdown.revisions_section(out, names)
  text = "\n".join(lines)
  assert lines[0] == "## Sequential revisions"
  assert "the paper: about 38%" in text
  c2i = out["transitions"]["pooled"]["correct_to_incorrect"]
  assert f"{c2i['rate']:.3f} [{c2i['ci'][0]:.3f}, {c2i['ci'][1]:.3f}]" in text
  for n in (1, 2, 4, 8):
    for c, l in rev.splits(n):
      row = next(x for x in lines if x.startswith(f"| {n} | {c} x {l} |"))
      assert row.count("[") == 5  # an accuracy with its CI per selection
  for c in out["claims"]:
    assert c["claim"] in text and f"**{c['verdict']}**" in text
  assert "beam search M=2" in text and "best-of-N weighted" in text
  for name in names:
    assert f"![{name}]({name})" in text


def test_compare_at_equal_flops_gives_search_at_least_the_revisions_flops():
  bins = np.repeat(np.arange(3), 4)
  pts = rev.curves(rev.revision_cells([random_chains(12, 4, 0)], [1, 2, 4]), bins, 3)
  search = _search_curves(12, bins, 3)  # best-of-N at 100, 200, 400 FLOPs per problem
  bon = {c.budget_generations: c for c in search if c.method == "best_of_n_weighted"}
  rows = rev.compare_at_equal_flops(pts, search, seed=0)
  assert [(r["budget"], r["revisions"]["role"]) for r in rows] == [
      (1, "pure sequential"), (2, "pure sequential"), (4, "pure sequential"), (4, "balanced")]
  for r in rows:
    mine = rev.find(pts, "hier_orm", r["budget"], r["revisions"]["chains"])
    flops = mine.flops / 12
    assert r["revisions"]["flops_per_problem"] == pytest.approx(flops)
    enough = [n for n in sorted(bon) if 100.0 * n >= flops]
    want = enough[0] if enough else 4
    assert r["search"]["budget"] == want and r["search_flops_at_least"] == bool(enough)
    assert r["comparison"]["diff"] == pytest.approx(mine.accuracy - bon[want].accuracy)
  assert rev.compare_at_equal_flops(pts, None) == []


def test_training_rounds_are_reported_as_chosen_and_compared_paired():
  """Each round's chosen checkpoint: its first and last answers and flips on the held-out
  train problems, with CIs, and its last answer against the round before (same problems)."""
  def choice(rows, step=6):
    curve = [{"step": 3, "accuracy_by_answer": [0.0, 0.0], "correct_to_incorrect": 0.0,
              "correct": ["00"] * len(rows)},
             {"step": step, "accuracy_by_answer": [0.0, 0.0], "correct_to_incorrect": 0.0,
              "correct": rows}]
    return {"step": step, "problems": [12, 16], "length": 2, "curve": curve}

  r0 = ["10", "11", "00", "01"]  # 2 correct first answers, one flipped; last 2/4
  r1 = ["11", "11", "01", "01"]  # no flip; last 4/4
  rounds = [{"round": 0, "trajectories": 30, "policy_rows": 10, "own_data": None,
             "checkpoint_choice": choice(r0)},
            {"round": 1, "trajectories": 50, "policy_rows": 17,
             "own_data": {"trajectories": 20, "keep_trajectories": 6,
                          "chain_accuracy_by_answer": [0.4, 0.5]},
             "checkpoint_choice": choice(r1)}]
  out = rev.training_rounds(rounds, seed=0)
  assert [r["round"] for r in out] == [0, 1]
  zero, one = out[0]["chosen"], out[1]["chosen"]
  assert zero["first"]["mean"] == 0.5 and zero["last"]["mean"] == 0.5
  assert (zero["correct_to_incorrect"]["count"], zero["correct_to_incorrect"]["of"]) == (1, 2)
  assert one["last"]["mean"] == 1.0 and one["correct_to_incorrect"]["count"] == 0
  assert "last_vs_previous_round" not in zero
  assert one["last_vs_previous_round"]["diff"] == pytest.approx(0.5)
  assert out[1]["own_trajectories"] == 20 and out[1]["own_keep_trajectories"] == 6
  lines = "\n".join(markdown._training_round_lines(out))
  assert "| 1 | 50 (+17) | 20 (6) | 6 | 0.500 [0.000, 1.000] | 1.000" in lines and "+0.500 [" in lines
  # Without a checkpoint choice there is nothing chosen to report.
  assert markdown._training_round_lines(rev.training_rounds(
      [{**rounds[0], "checkpoint_choice": None}])) == []
