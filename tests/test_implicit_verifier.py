"""LM-head verifiers (implicit PRM, DPO, the likelihood verifier): their objectives move the
scores the right way; during search they score as a full pass does, whatever the batch, and are
charged their model's tokens."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import assert_close
from conftest import policy_config
from search_fixtures import PROBLEMS
from search_fixtures import Task
from search_fixtures import Tok
from search_fixtures import full_pass_steps
from ttc_jax.models.transformer import Transformer
from ttc_jax.parallel import make_mesh
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.search import BeamSearch
from ttc_jax.search import BestOfN
from ttc_jax.search import ParticleFilter
from ttc_jax.search import SearchContext
from ttc_jax.training import data as data_lib
from ttc_jax.training import trainer
from ttc_jax.verifiers.implicit import ImplicitRewardVerifier
from ttc_jax.verifiers.confidence import Measure
from ttc_jax.verifiers.implicit import IncrementalLogprobs
from ttc_jax.verifiers.likelihood import LikelihoodVerifier
from ttc_jax.verifiers.scoring import Scorer


@pytest.fixture(scope="module")
def tuned_model():
  """pi: an LM of the policy's shape with other weights (as a fine-tune would have)."""
  return Transformer(policy_config(), rngs=nnx.Rngs(7))


@pytest.fixture(scope="module")
def implicit_ctx(core1, policy_model, tuned_model, special_ids):
  tok = Tok(special_ids.eos_ids[0], special_ids.step_ids[0])
  verifier = ImplicitRewardVerifier(tuned_model, policy_model, beta=0.05, pad_id=0)
  return SearchContext(core=core1, prm=verifier, task=Task(), tokenizer=tok, seed=3, run=2,
                       sp=SamplingParams(temperature=1.0, max_new_tokens=48), max_step_tokens=8)


@pytest.fixture(scope="module", params=["implicit_prm", "sft_lm_mean", "sft_lm_bottom10"])
def lm_ctx(request, implicit_ctx, tuned_model):
  """A search context whose verifier is an implicit PRM or a likelihood verifier (the mean,
  or DeepConf's bottom-10% groups, of the tuned model's log-probabilities)."""
  if request.param == "implicit_prm":
    return implicit_ctx
  measure = Measure("logprob", request.param.removeprefix("sft_lm_"), window=3)
  return dataclasses.replace(implicit_ctx, prm=LikelihoodVerifier(tuned_model, measure, pad_id=0))


@pytest.mark.parametrize("strategy", [BestOfN(n=4), BeamSearch(n=4, width=2, max_rounds=4),
                                      BeamSearch(n=4, width=2, lookahead=1, max_rounds=4),
                                      ParticleFilter(n=4, max_rounds=6)],
                         ids=["best-of-n", "beam", "lookahead", "particles"])
def test_search_scores_equal_the_full_pass_and_do_not_depend_on_the_batch(lm_ctx, strategy):
  ctx, verifier = lm_ctx, lm_ctx.prm
  together = strategy.run(ctx, PROBLEMS)
  scores = []
  for problem, res in zip(PROBLEMS, together):
    # Charged pi's forward over every policy token it read (pi_ref's came with sampling).
    assert res.budget.prm_tokens >= res.budget.policy_tokens > 0
    for c in res.candidates:
      assert_close(c.score, full_pass_steps(verifier, ctx.tokenizer, problem, c.tokens)[-1])
      scores.append(c.score)
    alone = strategy.run(ctx, [problem])[0]
    assert [c.tokens for c in alone.candidates] == [c.tokens for c in res.candidates]
    assert_close([c.score for c in alone.candidates], [c.score for c in res.candidates])
  # The scores are the verifier's, not a constant (pi differs from pi_ref; the likelihood
  # differs between solutions).
  assert len(scores) > 1 and np.std(scores) > 1e-3 * np.mean(np.abs(scores))


def test_the_likelihood_verifier_scores_its_models_log_probabilities(tuned_model):
  """A step's score is exp(mean log-prob) of the solution's tokens up to the step's end, under
  its model (one forward pass over the row), and a verifier needs an LM head and a log-prob
  measure."""
  rng = np.random.default_rng(5)
  rows = [rng.integers(3, tuned_model.config.vocab_size, n).tolist() for n in (19, 12)]
  prompts, ends = [5, 3], [[8, 12, 18], [4, 11]]
  verifier = LikelihoodVerifier(tuned_model, Measure("logprob", "mean"), pad_id=0)
  got = verifier.solution_step_scores(["q", "q"], rows, prompts, ends, batch_size=4)
  full = Scorer(tuned_model).token_confidence(rows, batch_size=4)
  for g, f, p, e in zip(got, full, prompts, ends):
    assert_close(g, [np.exp(f[p:x + 1, 0].mean()) for x in e])
  with pytest.raises(ValueError, match="summarises log-probabilities; got the measure "
                     "'conf_topk_mean'"):
    LikelihoodVerifier(tuned_model, Measure("topk", "mean"), pad_id=0)


def test_logprobs_fed_in_uneven_pieces_equal_a_full_forward(tuned_model):
  """Teacher forcing on pi's cache, a row fed in pieces of any width (rows adding nothing in a
  call, valid tokens after invalid ones), gives each token the log-probability one forward pass
  over the whole row gives it."""
  rng = np.random.default_rng(3)
  vocab = tuned_model.config.vocab_size
  rows = [rng.integers(3, vocab, n).tolist() for n in (23, 11, 17)]
  prompts = [4, 6, 2]
  lm = IncrementalLogprobs(tuned_model)
  width = max(prompts)
  tokens = np.zeros((3, width), np.int32)
  valid = np.zeros((3, width), bool)
  for r, (row, p) in enumerate(zip(rows, prompts)):
    tokens[r, width - p:] = row[:p]
    valid[r, width - p:] = True
  state = lm.prefill(tokens, valid, cache_size=48)
  got = [[] for _ in rows]
  pos = list(prompts)
  for call in range(6):
    t = 5
    tok = np.zeros((3, t), np.int32)
    val = np.zeros((3, t), bool)
    for r, row in enumerate(rows):
      take = [0, 3, 1, 5, 0, 4][(call + r) % 6]
      piece = row[pos[r]:pos[r] + take]
      cols = np.arange(len(piece)) + (1 if call % 2 and len(piece) < t else 0)  # a gap first
      tok[r, cols] = piece
      val[r, cols] = True
      pos[r] += len(piece)
    state, lp = lm.extend_logprobs(state, tok, val)
    assert np.all(lp[~val] == 0)
    for r in range(3):
      got[r] += lp[r, val[r]].tolist()
  full = Scorer(tuned_model).token_confidence([row[:n] for row, n in zip(rows, pos)],
                                              batch_size=4)
  for r, p in enumerate(prompts):
    assert len(got[r]) == pos[r] - p > 0
    assert_close(np.asarray(got[r]), full[r][p:pos[r], 0])


def _implicit_data(policy_model, rows, prompt, labels, group):
  ref = Scorer(policy_model).token_confidence(rows, batch_size=4)
  return data_lib.implicit_reward_dataset(rows, [prompt] * len(rows), [r[:, 0] for r in ref],
                                          labels, seq_len=32, group=group)


def _rewards(model, dataset, beta):
  batch = dataset.batch(np.arange(len(dataset)))
  return np.asarray(trainer.implicit_rewards(model, {k: jnp.asarray(v) for k, v in batch.items()},
                                             beta))


@pytest.mark.parametrize("objective", ["implicit_prm", "dpo"])
def test_objectives_raise_the_correct_solutions_reward_over_the_incorrect(
    objective, policy_model, tmp_path):
  """Starting from the reference (every implicit reward 0), a few steps on one correct and one
  incorrect solution of a problem put the correct one's reward above the incorrect one's (and,
  for the implicit PRM, on the right sides of 0)."""
  rng = np.random.default_rng(0)
  vocab = policy_model.config.vocab_size
  prompt = [1, 5, 9, 12]
  good, bad = (prompt + rng.integers(3, vocab, 10).tolist() for _ in range(2))
  data = _implicit_data(policy_model, [good, bad], len(prompt), [1.0, 0.0],
                        trainer.OBJECTIVE_GROUP.get(objective, 1))
  model = Transformer(policy_config(), rngs=nnx.Rngs(0))
  nnx.update(model, nnx.state(policy_model))  # pi starts as pi_ref
  assert_close(_rewards(model, data, 1.0), np.zeros(2), tol=1e-5)
  cfg = ml_collections.ConfigDict(dict(
      steps=20, batch_size=data.tokens.shape[0] // data.group, learning_rate=3e-3,
      warmup_steps=0, final_lr_fraction=1.0, weight_decay=0.0, b1=0.9, b2=0.98, grad_clip=1.0,
      checkpoint_every=100, log_every=100, seed=0))
  trainer.train(model, data, cfg, str(tmp_path), objective=objective, options={"beta": 0.5},
                mesh=make_mesh(devices=jax.devices()[:2]), log_fn=lambda _: None)
  r = _rewards(model, data, 1.0)
  assert r[0] > r[1]
  if objective == "implicit_prm":
    assert r[0] > 0 > r[1]


def test_sft_raises_the_likelihood_verifiers_score_of_the_reference_solution(policy_model,
                                                                              tmp_path):
  """The likelihood verifier's LM starts as the policy; a few SFT steps on a reference
  solution raise its score of that solution above the policy's own, and not of an unrelated
  one as much."""
  rng = np.random.default_rng(1)
  vocab = policy_model.config.vocab_size
  prompt = [1, 5, 9, 12]
  ref, other = (prompt + rng.integers(3, vocab, 10).tolist() for _ in range(2))
  n = len(ref)
  weights = np.zeros((1, n), np.float32)
  weights[0, len(prompt):] = 1.0
  data = data_lib.TokenDataset(tokens=np.asarray([ref], np.int32), valid=np.ones((1, n), bool),
                               weights=weights)
  model = Transformer(policy_config(), rngs=nnx.Rngs(0))
  nnx.update(model, nnx.state(policy_model))

  def score(m, row):
    v = LikelihoodVerifier(m, Measure("logprob", "mean"), pad_id=0)
    return v.solution_step_scores(["q"], [row], [len(prompt)], [[n - 1]], batch_size=2)[0][-1]

  before = [score(model, ref), score(model, other)]
  assert_close(before, [score(policy_model, ref), score(policy_model, other)])
  cfg = ml_collections.ConfigDict(dict(
      steps=10, batch_size=2, learning_rate=3e-3, warmup_steps=0, final_lr_fraction=1.0,
      weight_decay=0.0, b1=0.9, b2=0.98, grad_clip=1.0, checkpoint_every=100, log_every=100,
      seed=0))
  trainer.train(model, data_lib.TokenDataset(tokens=np.repeat(data.tokens, 2, 0),
                                             valid=np.repeat(data.valid, 2, 0),
                                             weights=np.repeat(data.weights, 2, 0)),
                cfg, str(tmp_path), objective="lm", mesh=make_mesh(devices=jax.devices()[:2]),
                log_fn=lambda _: None)
  after = [score(model, ref), score(model, other)]
  assert after[0] > 2 * before[0]
  assert after[0] / before[0] > after[1] / before[1]


def test_dpo_batches_keep_pairs_together_and_bad_data_is_named(policy_model):
  rows = [[1, 2, 3, 4, 5], [1, 2, 6], [1, 2, 7, 8], [1, 2, 9, 9, 9, 9]]
  ref = [np.zeros(len(r)) for r in rows]
  pairs = data_lib.implicit_reward_dataset(rows, [2] * 4, ref, [1, 0, 1, 0], 16, group=2)
  assert len(pairs) == 2 and list(pairs.lengths) == [5, 6]
  batch = pairs.batch(np.array([1, 0]))
  assert batch["tokens"].shape[0] == 4
  assert batch["tokens"][:2].tolist() == pairs.tokens[2:4].tolist()  # pair 1: rows 2 and 3
  assert batch["labels"].tolist() == [1, 0, 1, 0]
  assert pairs.weights[0].tolist()[:6] == [0, 0, 1, 1, 1, 0]  # solution tokens only
  with pytest.raises(ValueError, match="group=2: expected an integer >= 1 dividing the 3 rows"):
    data_lib.implicit_reward_dataset(rows[:3], [2] * 3, ref[:3], [1, 0, 1], 16, group=2)
  with pytest.raises(ValueError, match="row 1: prompt length 3 leaves no solution token"):
    data_lib.implicit_reward_dataset(rows, [2, 3, 2, 2], ref, [1, 0, 1, 0], 16)
  with pytest.raises(ValueError, match=r"takes examples of 2 rows; the dataset's have 1"):
    single = data_lib.implicit_reward_dataset(rows, [2] * 4, ref, [1, 0, 1, 0], 16)
    trainer.train(policy_model, single, ml_collections.ConfigDict(), "/nonexistent",
                  objective="dpo")
  with pytest.raises(ValueError, match="an implicit-reward verifier's model needs an LM head"):
    value = Transformer(dataclasses.replace(policy_config(), head="value"), rngs=nnx.Rngs(0))
    ImplicitRewardVerifier(value, policy_model, beta=0.1, pad_id=0)
