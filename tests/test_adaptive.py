"""Adaptive allocation (ttc_jax.search.adaptive): budget, labels, reduction to best-of-N."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from ttc_jax.search import adaptive
from ttc_jax.verifiers import aggregation


def _pool(seed: int, problems: int = 12, pool: int = 16, kinds: int = 4):
  rng = np.random.default_rng(seed)
  ids = rng.integers(-1, kinds, (problems, pool))
  scores = rng.uniform(0.0, 1.0, (problems, pool))
  correct = (ids == 0)  # answer 0 is right
  return ids, scores, correct


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), budget=st.sampled_from([1, 1.5, 2, 3, 4, 7, 16]),
       first=st.integers(1, 4), min_samples=st.integers(1, 8),
       settle=st.sampled_from([0.5, 0.7, 0.9, adaptive.NEVER]),
       hopeless=st.sampled_from([0.0, 0.2, 0.4]),
       selection=st.sampled_from(adaptive.SELECTIONS))
def test_the_allocation_never_spends_more_than_the_budget(seed, budget, first, min_samples,
                                                          settle, hopeless, selection):
  if first > budget:
    return
  ids, scores, _ = _pool(seed)
  strat = adaptive.AdaptiveAllocation(budget=budget, first=first, min_samples=min_samples,
                                      settle=settle, hopeless=hopeless, selection=selection)
  alloc = adaptive.allocate(strat, ids, scores)
  assert alloc.counts.sum() <= np.floor(budget * len(ids) + 1e-9)
  assert (alloc.counts >= min(first, ids.shape[1])).all()
  assert (alloc.counts <= ids.shape[1]).all()
  if settle > 1 and hopeless == 0:  # nothing stops a problem: the whole budget is spent
    assert alloc.counts.sum() == min(np.floor(budget * len(ids) + 1e-9), ids.size)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), budget=st.sampled_from([2, 3, 4, 6]),
       settle=st.sampled_from([0.5, 0.7, 0.9]), hopeless=st.sampled_from([0.0, 0.3]))
def test_a_decision_reads_only_the_samples_drawn(seed, budget, settle, hopeless):
  """Samples after what a problem drew can be anything: the allocation is the same (it never
  looks ahead), so it equals sampling in rounds."""
  ids, scores, _ = _pool(seed)
  strat = adaptive.AdaptiveAllocation(budget=budget, first=1, min_samples=2, settle=settle,
                                      hopeless=hopeless)
  alloc = adaptive.allocate(strat, ids, scores)
  rng = np.random.default_rng(seed + 1)
  unseen = np.arange(ids.shape[1])[None] >= alloc.counts[:, None]
  ids2 = np.where(unseen, rng.integers(-1, 9, ids.shape), ids)
  scores2 = np.where(unseen, rng.uniform(0, 1, ids.shape), scores)
  again = adaptive.allocate(strat, ids2, scores2)
  np.testing.assert_array_equal(again.counts, alloc.counts)
  np.testing.assert_array_equal(again.chosen, alloc.chosen)


def test_no_label_reaches_the_allocation():
  """The allocation takes answers and scores only; flipping every label changes the outcome,
  never the samples drawn or the answers chosen."""
  ids, scores, correct = _pool(3)
  strat = adaptive.AdaptiveAllocation(budget=4, first=1, min_samples=2, settle=0.7)
  alloc = adaptive.allocate(strat, ids, scores)
  right = adaptive.outcomes(alloc, ids, correct)
  flipped = adaptive.outcomes(alloc, ids, ~correct)
  answered = alloc.chosen >= 0
  np.testing.assert_array_equal(right[answered], 1 - flipped[answered])


@pytest.mark.parametrize("selection", adaptive.SELECTIONS)
def test_identical_problems_reduce_to_best_of_n(selection):
  ids, scores, correct = _pool(5, problems=1)
  ids, scores, correct = (np.repeat(x, 9, axis=0) for x in (ids, scores, correct))
  n = 8
  # Nothing settles: every problem draws exactly N, and the answer is best-of-N's.
  alloc = adaptive.allocate(adaptive.AdaptiveAllocation(budget=n, selection=selection), ids,
                            scores)
  np.testing.assert_array_equal(alloc.counts, np.full(9, n))
  expected = aggregation.choose(ids[:, :n], scores[:, :n] if selection == "weighted" else None,
                                selection)
  np.testing.assert_array_equal(alloc.chosen, expected)
  bon = adaptive.allocate(adaptive.best_of_n(n, selection), ids, scores)
  np.testing.assert_array_equal(bon.counts, alloc.counts)
  np.testing.assert_array_equal(bon.chosen, alloc.chosen)
  # With any thresholds, identical problems are treated identically.
  for strat in adaptive.candidates(n, selection):
    counts = adaptive.allocate(strat, ids, scores).counts
    assert (counts == counts[0]).all(), strat


def test_an_open_problem_takes_what_settled_ones_leave():
  # Problem 0 always agrees (settles after 2), problem 1 never does: it gets the rest.
  ids = np.array([[0] * 8, [0, 1, 2, 3, 0, 1, 2, 3]])
  scores = np.ones_like(ids, np.float64)
  alloc = adaptive.allocate(adaptive.AdaptiveAllocation(budget=4, first=1, min_samples=2,
                                                        settle=0.9), ids, scores)
  np.testing.assert_array_equal(alloc.counts, [2, 6])
  assert alloc.settled.tolist() == [True, False]
  # Given up as hopeless, it stops too: the budget is left unspent.
  alloc = adaptive.allocate(adaptive.AdaptiveAllocation(budget=4, first=1, min_samples=4,
                                                        settle=0.9, hopeless=0.3), ids, scores)
  np.testing.assert_array_equal(alloc.counts, [4, 4])
  assert alloc.hopeless.tolist() == [False, True]


def test_the_remainder_goes_to_the_most_contested():
  # Three open problems with 2 samples each and 2 left: an equal share of 0 each, then one
  # each to the two with the lowest leading share (0.5, 0.5 against 1).
  ids = np.array([[0, 0, 0, 0], [0, 1, 1, 1], [1, 0, 2, 2]])
  scores = np.ones_like(ids, np.float64)
  alloc = adaptive.allocate(adaptive.AdaptiveAllocation(budget=8 / 3, first=2, min_samples=3),
                            ids, scores)
  np.testing.assert_array_equal(alloc.counts, [2, 3, 3])


def test_choose_reads_train_problems_and_prefers_best_of_n_on_ties():
  ids, scores, correct = _pool(5, problems=1)
  ids, scores, correct = (np.repeat(x, 6, axis=0) for x in (ids, scores, correct))
  choice = adaptive.choose(4, ids, scores, correct)
  assert choice.tried == len(adaptive.candidates(4))
  assert 0.0 <= choice.train_accuracy <= 1.0
  # A pool where nothing helps (every sample right): best-of-N is kept.
  ones = np.zeros_like(ids)
  choice = adaptive.choose(4, ones, scores, np.ones_like(correct))
  assert choice.train_accuracy == 1.0
  assert choice.train_generations <= 4


@pytest.mark.parametrize("kwargs, match", [
    (dict(budget=0), "budget"), (dict(budget=2, first=3), "first=3"),
    (dict(budget=2, first=0), "first=0"), (dict(budget=2, selection="vanilla"), "selection"),
    (dict(budget=2, hopeless=1.5), "hopeless"),
])
def test_bad_strategies_are_one_line(kwargs, match):
  with pytest.raises(ValueError, match=match):
    adaptive.AdaptiveAllocation(**kwargs)


def test_bad_pools_are_named():
  with pytest.raises(ValueError, match="same"):
    adaptive.allocate(adaptive.AdaptiveAllocation(budget=2), np.zeros((2, 3), int),
                      np.zeros((2, 4)))
  with pytest.raises(ValueError, match="NaN"):
    adaptive.allocate(adaptive.AdaptiveAllocation(budget=2), np.zeros((1, 2), int),
                      np.array([[0.5, np.nan]]))
