"""Confidence verifiers: the policy's own token confidences as a verifier, during search (from
the sampling core, 0 FLOPs) and on finished solutions (one forward pass), the same scores."""

import math

import numpy as np
import pytest

from conftest import NEW_TOKENS
from conftest import SAMPLE
from conftest import assert_close
from search_fixtures import PROBLEMS
from search_fixtures import Task
from search_fixtures import Tok
from search_fixtures import full_pass_steps
from ttc_jax.sampling.core import row_keys
from ttc_jax.search import BeamSearch
from ttc_jax.search import BestOfN
from ttc_jax.search import ParticleFilter
from ttc_jax.search import SearchContext
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.verifiers.confidence import AGGREGATIONS
from ttc_jax.verifiers.confidence import TOKEN_CONFIDENCES
from ttc_jax.verifiers.confidence import ConfidenceVerifier
from ttc_jax.verifiers.confidence import Measure
from ttc_jax.verifiers.scoring import Scorer


def _by_definition(x: np.ndarray, how: str, window: int, tail: int) -> float:
  """The summary of a whole sequence of token confidences, written out from its definition."""
  if how == "mean":
    return float(np.mean(x))
  if how == "min":
    return float(np.min(x))
  if how == "tail":
    return float(np.mean(x[-tail:]))
  if len(x) < window:
    groups = [float(np.mean(x))]
  else:
    groups = [float(np.mean(x[i:i + window])) for i in range(len(x) - window + 1)]
  if how == "lowest_group":
    return min(groups)
  k = max(1, math.ceil(0.1 * len(groups)))
  return float(np.mean(sorted(groups)[:k]))


@pytest.mark.parametrize("how", AGGREGATIONS)
@pytest.mark.parametrize("token", TOKEN_CONFIDENCES)
def test_every_prefix_is_scored_by_the_definition(token, how):
  rng = np.random.default_rng(0)
  measure = Measure(token=token, aggregation=how, window=4, tail=5)
  col = TOKEN_CONFIDENCES.index(token)
  for length in (1, 3, 4, 5, 17, 41):
    stats = rng.uniform(0.0, 6.0, (length, 3))
    stats[:, 0] = -stats[:, 0]  # a log-probability is <= 0; the others >= 0
    got = measure.prefix_scores(stats)
    for t in range(1, length + 1):
      s = _by_definition(stats[:t, col], how, 4, 5)
      want = math.exp(s) if token == "logprob" else s / (1 + s)
      assert got[t - 1] == pytest.approx(want, rel=1e-12), (length, t)
    assert measure.score(stats) == pytest.approx(got[-1], rel=1e-12)
    assert_close(measure.prefix_scores(stats, last=3), got[-3:], tol=1e-12)  # the last ones only
  assert measure.score(np.zeros((0, 3))) == 0.0  # nothing generated scores 0


def test_names_round_trip_and_bad_ones_are_named():
  for token in TOKEN_CONFIDENCES:
    for how in AGGREGATIONS:
      m = Measure(token, how)
      assert Measure.from_name(m.name) == m
  with pytest.raises(ValueError, match=r"'conf_logprob_median'.*aggregation one of"):
    Measure.from_name("conf_logprob_median")
  with pytest.raises(ValueError, match=r"token confidence 'entropy'"):
    Measure(token="entropy")
  with pytest.raises(ValueError, match=r"confidence window 0"):
    Measure(window=0)


def test_sampled_confidence_is_the_full_forward_s(core1, policy_model, prompts):
  """What the sampling core returns with each token (its log-probability, DeepConf's top-k
  confidence, self-certainty) is what one forward pass of the policy over the finished row
  gives: a confidence verifier scores a solution the same during search and afterwards."""
  tokens, valid = prompts
  out = core1.generate(tokens, valid, row_keys(5, np.arange(len(tokens)), 0), SAMPLE)
  lengths = np.asarray(out.lengths)
  gen, logprobs, conf = (np.asarray(x) for x in (out.tokens, out.logprobs, out.confidence))
  assert conf.shape == (len(tokens), NEW_TOKENS, 2)
  rows = [tokens[i][valid[i]].tolist() + gen[i, :lengths[i]].tolist() for i in range(len(tokens))]
  full = Scorer(policy_model).token_confidence(rows, batch_size=8)
  for i, row in enumerate(full):
    p, n = int(valid[i].sum()), int(lengths[i])
    assert row.shape == (p + n, 3)
    assert_close(row[p:, 0], logprobs[i, :n])
    assert_close(row[p:, 1:], conf[i, :n])
    assert np.all(conf[i, n:] == 0) and np.all(logprobs[i, n:] == 0)
  # The statistics are what their names say: top-k confidence >= -log p of the likeliest token,
  # self-certainty >= 0.
  alive = np.arange(NEW_TOKENS)[None] < lengths[:, None]
  assert np.all(conf[alive][:, 0] > 0) and np.all(conf[alive][:, 1] >= -1e-5)


@pytest.fixture(scope="module")
def conf_ctx(core1, policy_model, special_ids):
  tok = Tok(special_ids.eos_ids[0], special_ids.step_ids[0])
  verifier = ConfidenceVerifier(Measure("topk", "lowest_group", window=3), policy_model, pad_id=0)
  return SearchContext(core=core1, prm=verifier, task=Task(), tokenizer=tok, seed=3, run=2,
                       sp=SamplingParams(temperature=1.0, max_new_tokens=48), max_step_tokens=8)


@pytest.mark.parametrize("strategy", [BestOfN(n=4), BeamSearch(n=4, width=2, max_rounds=4),
                                      BeamSearch(n=4, width=2, lookahead=1, max_rounds=4),
                                      ParticleFilter(n=4, max_rounds=6)],
                         ids=["best-of-n", "beam", "lookahead", "particles"])
def test_search_with_confidence_costs_no_flops_and_scores_as_a_full_pass(conf_ctx, strategy):
  ctx, verifier = conf_ctx, conf_ctx.prm
  together = strategy.run(ctx, PROBLEMS)
  for problem, res in zip(PROBLEMS, together):
    # 0 verifier FLOPs: the scores came with the sampled tokens.
    assert res.budget.prm_tokens == 0 and res.budget.prm_flops == 0
    assert res.budget.policy_tokens > 0
    for c in res.candidates:
      assert_close(c.score, full_pass_steps(verifier, ctx.tokenizer, problem, c.tokens)[-1])
    # A problem's candidates and scores do not depend on the batch.
    alone = strategy.run(ctx, [problem])[0]
    assert [c.tokens for c in alone.candidates] == [c.tokens for c in res.candidates]
    assert_close([c.score for c in alone.candidates], [c.score for c in res.candidates])
  assert sum(len(r.candidates) for r in together) > 0


def test_step_scores_fed_in_pieces_equal_the_whole(policy_model):
  """Feeding a solution step by step (search) gives each step the score the full pass gives
  it; rows added nothing keep their score; a call without the sampled confidence is refused."""
  rng = np.random.default_rng(1)
  verifier = ConfidenceVerifier(Measure("logprob", "bottom10", window=2), policy_model, 0)
  stats = [np.column_stack([-rng.uniform(0, 3, n), rng.uniform(0, 5, (n, 2))]) for n in (9, 4)]
  state = verifier.start([None, None], None, None, cache_size=0, max_step_tokens=0)
  cuts = [[0, 3, 3, 7, 9], [0, 1, 4, 4, 4]]  # the second row adds nothing in later calls
  for j in range(4):
    width = max(c[j + 1] - c[j] for c in cuts)
    conf = np.zeros((2, width, 3), np.float32)
    valid = np.zeros((2, width), bool)
    for r, c in enumerate(cuts):
      conf[r, :c[j + 1] - c[j]] = stats[r][c[j]:c[j + 1]]
      valid[r, :c[j + 1] - c[j]] = True
    state = verifier.extend(state, np.zeros((2, width), np.int32), valid, conf)
    for r, c in enumerate(cuts):
      assert verifier.scores(state)[r] == pytest.approx(
          verifier.measure.score(np.float32(stats[r][:c[j + 1]])), rel=1e-12)
  whole = verifier.step_scores_of([np.float32(s) for s in stats], [0, 0], [[2, 6, 8], [0, 3]])
  pieces = [verifier.measure.prefix_scores(np.float32(s)) for s in stats]
  assert_close(whole[0], pieces[0][[2, 6, 8]])
  assert_close(whole[1], pieces[1][[0, 3]])
  assert np.all(verifier.tokens_fed(state) == 0) and verifier.cache_index(state) == 0
  with pytest.raises(ValueError, match="confidence the sampling core returned"):
    verifier.extend(state, np.zeros((2, 1), np.int32), np.ones((2, 1), bool))
