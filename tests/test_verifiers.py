"""Verifiers: answer selection, AUC, MC labels, scoring."""

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import assert_close
from conftest import policy_config
from ttc_jax.analysis import difficulty
from ttc_jax.analysis import verifiers as verifier_metrics
from ttc_jax.models.transformer import Transformer
from ttc_jax.sampling import solutions
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.sampling.core import SpecialIds
from ttc_jax.verifiers import aggregation
from ttc_jax.verifiers import labels
from ttc_jax.verifiers.scoring import Scorer
from ttc_jax.verifiers.scoring import aggregate_steps


# ----------------------------------------------------------------------- aggregation
def test_step_aggregations():
  s = [np.array([0.9, 0.2, 0.5]), np.array([0.4]), np.array([])]
  np.testing.assert_allclose(aggregate_steps(s, "last"), [0.5, 0.4, 0.0])
  np.testing.assert_allclose(aggregate_steps(s, "min"), [0.2, 0.4, 0.0])
  np.testing.assert_allclose(aggregate_steps(s, "prod"), [0.09, 0.4, 0.0])
  with pytest.raises(ValueError, match="'mean'"):
    aggregate_steps(s, "mean")


def test_select_methods_on_a_hand_example():
  # answers: a a b c None ; scores favour b alone, but a's total is larger.
  ids = np.array([0, 0, 1, 2, -1])
  scores = np.array([0.4, 0.4, 0.7, 0.1, 0.99])
  all5 = ids[None]
  assert aggregation.choose(all5, None, "majority")[0] == 0
  assert aggregation.choose(all5, scores[None], "weighted")[0] == 0
  assert aggregation.choose(all5, scores[None], "vanilla")[0] == -1  # the None
  assert aggregation.choose(ids[[0, 2, 3]][None], scores[[0, 2, 3]][None], "weighted")[0] == 1
  assert aggregation.choose(ids[[4]][None], None, "majority")[0] == -1


def test_ties_go_to_the_answer_seen_first():
  # majority: 1 vote each; weighted: 0.5 each; vanilla: equal top scores.
  for order, want in [([0, 1, 2], "a"), ([2, 1, 0], "c"), ([1, 0, 2], "b")]:
    answers = np.array(["a", "b", "c"])[order].tolist()
    assert aggregation.select_answer(answers, None, "majority") == want
    assert aggregation.select_answer(answers, [0.5, 0.5, 0.5], "weighted") == want
    assert aggregation.select_answer(answers, [0.5, 0.5, 0.5], "vanilla") == want
  assert aggregation.select_answer([], [], "weighted") is None
  assert aggregation.select_answer([None, None], [0.2, 0.9], "weighted") is None
  with pytest.raises(ValueError, match="'best'"):
    aggregation.select_answer(["a"], [1.0], "best")
  with pytest.raises(ValueError, match="needs verifier scores"):
    aggregation.select_answer(["a"], None, "weighted")


def test_weighted_sums_are_accumulated_in_sample_order():
  """Sums do not depend on how the samples are grouped (floating point order)."""
  rng = np.random.default_rng(0)
  scores = rng.random(64)
  answers = rng.integers(0, 3, 64).astype(str).tolist()
  totals = {}
  for a, x in zip(answers, scores):
    totals[a] = totals.get(a, 0.0) + float(x)
  want = max(totals, key=lambda a: totals[a])
  assert aggregation.select_answer(answers, scores, "weighted") == want


def test_accuracy_curves_match_closed_forms():
  # One problem, 4 samples, 1 correct ("7"): N=1 accuracy of every method is 1/4;
  # at N=4 majority must pick among 4 distinct answers uniformly (1/4), weighted
  # and best-of-N pick the highest score (the correct one).
  answers = [["7", "1", "2", "3"]]
  scores = np.array([[0.9, 0.1, 0.2, 0.3]])
  c = aggregation.accuracy_curves(answers, ["7"], scores, [1, 4],
                                  ["majority", "vanilla", "weighted"], subsamples=4000, seed=1)
  for method in c:
    assert abs(c[method][0] - 0.25) < 0.03
  assert abs(c["majority"][1] - 0.25) < 0.03
  assert c["vanilla"][1] == 1.0 and c["weighted"][1] == 1.0


def test_accuracy_curves_average_over_problems_and_check_input():
  answers = [["1", "1"], ["2", None]]
  c = aggregation.accuracy_curves(answers, ["1", "3"], None, [2], ["majority"], 5)
  assert c["majority"] == [0.5]
  with pytest.raises(ValueError, match="needs verifier scores"):
    aggregation.accuracy_curves(answers, ["1", "3"], None, [1], ["weighted"], 5)
  with pytest.raises(ValueError, match="N=4 exceeds"):
    aggregation.accuracy_curves(answers, ["1", "3"], None, [4], ["majority"], 5)


def test_roc_auc_matches_pairwise_definition():
  rs = np.random.RandomState(0)
  s = rs.rand(60).round(1)  # ties
  y = rs.rand(60) < 0.4
  pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in s[y] for b in s[~y]]
  assert verifier_metrics.roc_auc(s, y) == pytest.approx(np.mean(pairs))
  assert np.isnan(verifier_metrics.roc_auc(s, np.ones(60, bool)))


def test_within_problem_auc_ignores_difficulty_and_pools_pairs():
  # Problem 0: every right sample above every wrong one; problem 1: the reverse; a
  # pooled AUC would be high (problem 0 is easy and scored high), within-problem 0.5.
  scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5]])
  correct = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], bool)
  w = verifier_metrics.within_problem_auc(scores, correct)
  assert w["problems"] == 2 and w["of"] == 3  # the all-right problem has no pairs
  assert w["mean_auc"] == pytest.approx(0.5)  # (1 + 0) / 2
  assert w["pairwise_accuracy"] == pytest.approx(3 / 6)  # 3 of 3 pairs, 0 of 3
  assert w["mean_auc_ci"][0] <= 0.5 <= w["mean_auc_ci"][1]
  assert verifier_metrics.roc_auc(scores.ravel(), correct.ravel()) > 0.6
  # Grouped 1-D input gives the same; ties count one half.
  g = verifier_metrics.within_problem_auc(scores.ravel(), correct.ravel(), np.repeat([0, 1, 2], 4))
  assert g["mean_auc"] == pytest.approx(0.5)
  t = verifier_metrics.within_problem_auc(np.array([[0.5, 0.5]]), np.array([[1, 0]], bool))
  assert t["mean_auc"] == pytest.approx(0.5)


def test_top_of_subsets_is_exact():
  """Expected value of the top-scored sample of a random N-subset, against brute force."""
  import itertools
  rs = np.random.RandomState(1)
  scores = rs.rand(3, 6).round(1)  # ties share their probability
  values = rs.rand(3, 6)
  got = verifier_metrics.top_of_subsets(scores, values, [1, 2, 3, 6])
  for i, n in enumerate([1, 2, 3, 6]):
    for p in range(3):
      want = []
      for sub in itertools.combinations(range(6), n):
        top = max(scores[p, j] for j in sub)
        want.append(np.mean([values[p, j] for j in sub if scores[p, j] == top]))
      assert got[i, p] == pytest.approx(np.mean(want))


def test_calibration_bins_scores_and_counts():
  cal = verifier_metrics.calibration(np.array([0.05, 0.05, 0.95, 0.95, 0.55]),
                                     np.array([0, 1, 1, 1, 0]), bins=10)
  assert cal["count"] == [2, 1, 2]
  assert_close(cal["mean_score"], [0.05, 0.55, 0.95])
  assert_close(cal["frac_correct"], [0.5, 0.0, 1.0])
  assert cal["ece"] == pytest.approx((2 * 0.45 + 0.55 + 2 * 0.05) / 5)


def test_bootstrap_interval_matches_the_normal_interval_of_a_proportion():
  """Known answer: for 0/1 outcomes the 95% percentile bootstrap interval of the mean
  is close to p +- 1.96 sqrt(p (1 - p) / n); a constant has a point interval."""
  from ttc_jax.analysis import stats
  x = np.zeros(400)
  x[:120] = 1  # p = 0.3
  est = stats.mean_ci(x, seed=0)
  half = 1.96 * np.sqrt(0.3 * 0.7 / 400)
  assert est.mean == pytest.approx(0.3)
  assert est.low == pytest.approx(0.3 - half, abs=0.15 * half)
  assert est.high == pytest.approx(0.3 + half, abs=0.15 * half)
  assert stats.mean_ci(np.ones(50)).to_json()["ci"] == [1.0, 1.0]
  assert stats.mean_ci(x, seed=0) == est  # deterministic given the seed
  with pytest.raises(ValueError, match="not finite"):
    stats.mean_ci(np.array([0.1, np.nan]))


def test_bootstrap_intervals_cover_the_truth_about_95_percent():
  """Coverage over repeated experiments with a known mean (Bernoulli 0.4, 200 problems)."""
  from ttc_jax.analysis import stats
  rs = np.random.RandomState(3)
  hits = [stats.mean_ci((rs.rand(200) < 0.4).astype(float), resamples=1000, seed=i)
          for i in range(200)]
  cover = np.mean([e.low <= 0.4 <= e.high for e in hits])
  assert 0.9 <= cover <= 0.99, cover


def test_paired_bootstrap_sees_a_consistent_small_gain_that_unpaired_noise_hides():
  from ttc_jax.analysis import stats
  rs = np.random.RandomState(4)
  base = (rs.rand(300) < 0.5).astype(float)
  better = base.copy()
  better[np.nonzero(base == 0)[0][:15]] = 1  # +5 points on the same problems, never worse
  cmp = stats.paired_diff(better, base, names=("new", "old"))
  assert cmp.significant and cmp.verdict == "new better"
  assert cmp.diff.mean == pytest.approx(0.05)
  # Unpaired intervals of the two accuracies overlap: only the pairing shows it.
  a, b = stats.mean_ci(better), stats.mean_ci(base)
  assert a.low < b.high
  same = stats.paired_diff(base, base[::-1].copy(), names=("x", "y"))
  assert not same.significant and same.verdict == "no significant difference"
  with pytest.raises(ValueError, match="same problems"):
    stats.paired_diff(base, base[:10])
  spread = stats.seed_spread([[1, 0, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]])
  assert spread["per_seed"] == [0.75, 1.0, 0.5]
  assert spread["std"] == pytest.approx(0.25)


def test_oracle_bins_are_equal_quantiles_easiest_first():
  p = np.array([0.1, 0.9, 0.5, 0.5, 0.0, 1.0, 0.3, 0.7, 0.2, 0.6])
  bins = difficulty.oracle_bins(p)
  assert np.bincount(bins).tolist() == [2] * 5
  assert set(bins[p >= 0.9]) == {0} and set(bins[p <= 0.1]) == {4}


# ------------------------------------------------------------------------- MC labels
class _Tok:
  step_id, eos_id, pad_id = 37, 36, 0
  step_ids, eos_ids, step_pairs = (37,), (36,), ()

  def decode(self, ids):
    return " ".join(map(str, ids))


class _Task:
  """'Correct' iff the token before the final EOS is even (about half the completions)."""

  def is_correct(self, text, problem):
    toks = text.split()
    return len(toks) >= 2 and int(toks[-2]) % 2 == 0


class _Problem:
  def __init__(self, index):
    self.index, self.split = index, "test"


@pytest.fixture(scope="module")
def core():
  model = Transformer(policy_config(), rngs=nnx.Rngs(0))
  return SamplingCore(model, SpecialIds(pad_id=0, eos_ids=(36,), step_ids=(37,)))


def _samples(core, n_problems=3, n=4, seed=0):
  problems = [_Problem(i) for i in range(n_problems)]
  prompts = [[1, 10 + i, 20 + i] for i in range(n_problems)]
  rows = [prompts[i] for i in range(n_problems) for _ in range(n)]
  ids = np.array([(2, 1, i, s) for i in range(n_problems) for s in range(n)])
  sp = SamplingParams(temperature=1.0, max_new_tokens=12)
  gens = solutions.generate(core, rows, ids, seed, sp, batch_size=8, log_fn=lambda s: None)
  texts = [_Tok().decode(gens.row(i)) for i in range(len(rows))]
  correct = np.array([bool(gens.stopped[i]) and _Task().is_correct(t, None)
                      for i, t in enumerate(texts)])
  return solutions.ProblemSamples(problems=problems, n=n, prompts=prompts, gens=gens,
                                  texts=texts, answers=[None] * len(rows), correct=correct)


def test_greedy_mc_labels_equal_the_greedy_completion_of_each_prefix(core):
  samples = _samples(core)
  greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
  ls = labels.label_samples(core, _Tok(), _Task(), samples, 4, 0, "rollouts", greedy,
                            batch_size=16, log_fn=lambda s: None)
  checked = 0
  for i in range(len(ls)):
    row, ends = ls.row(i), ls.ends(i)
    p = len(samples.prompts[i // samples.n])
    assert row[:p] == samples.prompts[i // samples.n]
    assert ls.step_labels(i)[-1] == float(samples.correct[i])  # last step: own correctness
    for j, e in enumerate(ends[:-1]):
      prefix = row[:e + 1]
      assert row[e] == _Tok.step_id
      # A rollout finishes the solution under the solution's own cap of 12 tokens.
      left = greedy.max_new_tokens - (e + 1 - p)
      out = core.generate(np.array([prefix]), None, solutions.row_keys(0, [0]), greedy,
                          limits=[left])
      gen = np.asarray(out.tokens)[0, :int(out.lengths[0])].tolist()
      assert len(gen) <= left
      want = bool(out.stopped[0]) and _Task().is_correct(_Tok().decode(row[p:e + 1] + gen), None)
      assert ls.step_labels(i)[j] == float(want)
      checked += 1
  assert checked > 0


def test_mc_labels_are_fractions_of_k(core):
  samples = _samples(core, seed=3)
  ls = labels.label_samples(core, _Tok(), _Task(), samples, 4, 0, "rollouts",
                            SamplingParams(temperature=1.0, max_new_tokens=12), batch_size=16,
                            log_fn=lambda s: None)
  vals = ls.labels[np.isfinite(ls.labels)]
  assert vals.size > len(ls)  # more than one step per sample on average
  np.testing.assert_allclose(vals * 4, np.round(vals * 4))
  assert 0 < vals.mean() < 1


def test_mc_labels_by_continuous_batching_are_the_static_ones(core):
  """Every rollout a request of its own, slots refilled every 3 steps: the same labels."""
  samples = _samples(core, seed=3)
  sp = SamplingParams(temperature=1.0, max_new_tokens=12)
  static = labels.label_samples(core, _Tok(), _Task(), samples, 4, 0, "rollouts", sp,
                                batch_size=16, log_fn=lambda s: None)
  served = labels.label_samples(core, _Tok(), _Task(), samples, 4, 0, "rollouts", sp,
                                batch_size=16, segment=3, log_fn=lambda s: None)
  np.testing.assert_array_equal(served.labels, static.labels)
  assert np.isfinite(static.labels).sum() > len(static)


def test_scorer_reads_step_ends_and_matches_a_full_forward():
  cfg = policy_config()
  model = Transformer(type(cfg)(**{**cfg.__dict__, "head": "value"}), rngs=nnx.Rngs(1))
  scorer = Scorer(model)
  rows = [[1, 5, 6, 37, 8, 36], [1, 7, 36]]
  got = scorer.step_scores(rows, [[3, 5], [2]], batch_size=4)
  for row, ends, g in zip(rows, [[3, 5], [2]], got):
    values, _ = model(np.array([row]))
    want = 1 / (1 + np.exp(-np.asarray(values[0])[ends]))
    assert_close(g, want)
  # An LM head scores each token by its probability given the prefix (the policy's
  # likelihood as a reference verifier).
  lm = Transformer(cfg, rngs=nnx.Rngs(0))
  probs = Scorer(lm).token_scores(rows, batch_size=4)
  for row, p in zip(rows, probs):
    logits, _ = lm(np.array([row]))
    logp = np.asarray(jax.nn.log_softmax(np.asarray(logits[0], np.float32), axis=-1))
    assert_close(p, np.exp([0.0] + [logp[t - 1, row[t]] for t in range(1, len(row))]))
  # The likelihood reference: the least likely generated token (after the prompt's 2 tokens).
  from ttc_jax.verifiers import names  # pylint: disable=g-import-not-at-top
  likelihood = names.measure_of(names.LIKELIHOOD)
  stats = lambda p: np.column_stack([np.log(p), np.ones((len(p), 2))])  # noqa: E731
  assert likelihood.score(stats(np.array([1.0, 0.5, 0.2, 0.9]))[2:]) == pytest.approx(0.2)
  assert likelihood.score(stats(np.array([1.0, 0.5]))[2:]) == 0.0  # nothing generated


def test_prefixes_up_to_the_end_of_the_context_are_rolled_out(core):
  """A sample cut by the context: its last prefixes leave 1-2 tokens of room."""
  ctx = core.config.max_seq_len
  prompt = [1, 11, 21]
  body = [5, 6, 37] * ((ctx - 4) // 3) + [5]  # ends mid-step: truncated, no answer
  assert len(prompt) + len(body) == ctx
  gens = solutions.Generations(tokens=np.array([body]), lengths=np.array([len(body)]),
                               stopped=np.array([False]))
  samples = solutions.ProblemSamples(problems=[_Problem(0)], n=1, prompts=[prompt], gens=gens,
                                     texts=[""], answers=[None], correct=np.array([False]))
  # The solution cap (64) is above the context: the context is what binds.
  ls = labels.label_samples(core, _Tok(), _Task(), samples, 2, 0, "rollouts",
                            SamplingParams(temperature=1.0, max_new_tokens=ctx), batch_size=16,
                            log_fn=lambda s: None)
  lab = np.array(ls.step_labels(0))
  assert lab.size == (ctx - 4) // 3 + 1 and ls.ends(0)[-1] == ctx - 1
  assert lab[-1] == 0.0  # the truncated sample itself
  assert np.all((lab * 2) == np.round(lab * 2)) and np.all((lab >= 0) & (lab <= 1))


def test_token_probs_apply_the_head_in_chunks(monkeypatch):
  """The policy's likelihood applies its LM head a few positions at a time (no
  rows x length x vocabulary array): rows longer than a chunk, and of a length that is
  not a multiple of it, get each token's probability under the full forward."""
  from ttc_jax.verifiers import scoring
  monkeypatch.setattr(scoring, "HEAD_CHUNK", 8)
  lm = Transformer(policy_config(), rngs=nnx.Rngs(2))
  rng = np.random.RandomState(0)
  rows = [[1] + rng.randint(3, 30, size=n).tolist() for n in (40, 19, 5)]
  probs = Scorer(lm).token_scores(rows, batch_size=3)
  for row, p in zip(rows, probs):
    logits, _ = lm(np.array([row]))
    logp = np.asarray(jax.nn.log_softmax(np.asarray(logits[0], np.float32), axis=-1))
    assert_close(p, np.exp([0.0] + [logp[t - 1, row[t]] for t in range(1, len(row))]))
