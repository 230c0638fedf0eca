"""Verifier ensembles (ttc_jax.verifiers.ensemble): the fit, its cross-validation, and the
ensemble as a search verifier."""

import dataclasses

from flax import nnx
import numpy as np
import pytest

from conftest import assert_close
from conftest import policy_config
from search_fixtures import PROBLEMS
from search_fixtures import Task
from search_fixtures import Tok
from search_fixtures import full_pass_steps
from ttc_jax.analysis.verifiers import within_problem_auc
from ttc_jax.models.transformer import Transformer
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.search import BeamSearch
from ttc_jax.search import BestOfN
from ttc_jax.search import SearchContext
from ttc_jax.verifiers import ensemble
from ttc_jax.verifiers import names
from ttc_jax.verifiers.confidence import ConfidenceVerifier
from ttc_jax.verifiers.confidence import Measure
from ttc_jax.verifiers.value_head import ValueHeadVerifier


def _table(problems=120, m=8, seed=0):
  """Samples of ``problems`` problems: a per-problem difficulty; two scores that each see the
  sample's correctness through their own noise, and one that sees only the difficulty."""
  rng = np.random.default_rng(seed)
  p = rng.uniform(0.2, 0.8, problems)
  correct = rng.uniform(size=(problems, m)) < p[:, None]
  signal = correct * 1.0 - 0.5
  sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
  a = sig(1.0 * signal + rng.normal(0, 0.6, correct.shape))
  b = sig(0.8 * signal + rng.normal(0, 0.6, correct.shape))
  easy = sig(np.repeat(p[:, None], m, 1) + rng.normal(0, 0.01, correct.shape))
  groups = np.repeat(np.arange(problems), m)
  return {"a": a.reshape(-1), "b": b.reshape(-1), "easy": easy.reshape(-1)}, correct, groups


def test_two_noisy_views_combined_rank_better_than_either():
  features, correct, groups = _table()
  both = {"a": features["a"], "b": features["b"]}
  e = ensemble.fit(both, correct.reshape(-1))
  assert e.components == ("a", "b") and all(w > 0 for w in e.weights)
  held = ensemble.cross_validated(both, correct.reshape(-1), groups, folds=5)
  auc = lambda s: within_problem_auc(s.reshape(correct.shape), correct)["mean_auc"]  # noqa: E731
  assert auc(held) > max(auc(features["a"]), auc(features["b"]))
  # The fitted score is a probability of being right: on average near the share right.
  s = e.combine([features["a"], features["b"]])
  assert np.all((s > 0) & (s < 1))
  assert abs(s.mean() - correct.mean()) < 0.05 * correct.mean() + 0.01
  # A component blind to which sample is right gets next to no weight on the within signal.
  e3 = ensemble.fit(features, correct.reshape(-1))
  assert e3.components == ("a", "b", "easy")
  # NaN where any component is NaN (a span that is no step).
  x = features["a"].copy()
  x[3] = np.nan
  assert np.isnan(e.combine([x, features["b"]])[3])
  assert not np.isnan(e.combine([x, features["b"]])[[0, 1, 2, 4]]).any()
  assert ensemble.Ensemble.from_json(e.to_json()) == e


def test_a_problem_s_cross_validated_score_never_sees_its_own_labels():
  """A planted leak: flipping one problem's labels changes every fit that saw them, but not
  that problem's own held-out scores (its fold was fitted without it)."""
  features, correct, groups = _table(problems=40)
  y = correct.reshape(-1)
  held = ensemble.cross_validated(features, y, groups, folds=4)
  flipped = y.copy()
  flipped[groups == 7] = ~flipped[groups == 7]
  again = ensemble.cross_validated(features, flipped, groups, folds=4)
  np.testing.assert_array_equal(again[groups == 7], held[groups == 7])
  assert not np.array_equal(again, held)


def test_bad_ensembles_are_named():
  with pytest.raises(ValueError, match="one weight per component"):
    ensemble.Ensemble(("a", "b"), (1.0,), 0.0)
  with pytest.raises(ValueError, match="all 6 are wrong"):
    ensemble.fit({"a": np.full(6, 0.3)}, np.zeros(6, bool))
  with pytest.raises(ValueError, match="ens_orm"):
    names.ensemble_base("ens_orm")
  assert names.ensemble_base("prm_last") is None
  assert names.charged_model("ens_prm") == names.PRM
  assert names.charged_model("ens_conf") == names.POLICY
  assert names.charged_model("ens_dpo") == names.DPO


@pytest.fixture(scope="module")
def parts(core1, policy_model):
  cfg = policy_config()
  prm = ValueHeadVerifier(Transformer(dataclasses.replace(cfg, head="value"),
                                      rngs=nnx.Rngs(7)), pad_id=0)
  return prm, ConfidenceVerifier(Measure("logprob", "mean"), policy_model, pad_id=0), \
      ConfidenceVerifier(Measure("logprob", "min"), policy_model, pad_id=0)


def _ctx(core1, special_ids, verifier):
  tok = Tok(special_ids.eos_ids[0], special_ids.step_ids[0])
  return SearchContext(core=core1, prm=verifier, task=Task(), tokenizer=tok, seed=3, run=2,
                       sp=SamplingParams(temperature=1.0, max_new_tokens=48), max_step_tokens=8)


@pytest.mark.parametrize("strategy", [BestOfN(n=4), BeamSearch(n=4, width=2, max_rounds=4)],
                         ids=["best-of-n", "beam"])
def test_an_ensemble_searches_as_it_scores_and_is_charged_as_its_base(core1, special_ids, parts,
                                                                      strategy):
  prm, mean, low = parts
  e = ensemble.Ensemble(("prm_last", "conf_logprob_mean", "policy_likelihood"),
                        (0.7, 1.3, 0.4), -0.2)
  verifier = ensemble.EnsembleVerifier(e, [prm, mean, low], "ens_prm")
  ctx = _ctx(core1, special_ids, verifier)
  together = strategy.run(ctx, PROBLEMS)
  for problem, res in zip(PROBLEMS, together):
    for c in res.candidates:
      assert_close(c.score, full_pass_steps(verifier, ctx.tokenizer, problem, c.tokens)[-1])
      # ... which is the combination of its components' full-pass scores.
      comp = [full_pass_steps(v, ctx.tokenizer, problem, c.tokens)[-1] for v in (prm, mean, low)]
      assert_close(c.score, e.combine([np.float64(x) for x in comp]))
    alone = strategy.run(ctx, [problem])[0]
    assert [c.tokens for c in alone.candidates] == [c.tokens for c in res.candidates]
    assert_close([c.score for c in alone.candidates], [c.score for c in res.candidates])
  assert sum(len(r.candidates) for r in together) > 0
  if isinstance(strategy, BestOfN):  # the same samples: charged exactly as the PRM alone
    base = strategy.run(_ctx(core1, special_ids, prm), PROBLEMS)
    for r, b in zip(together, base):
      assert r.budget.prm_tokens == b.budget.prm_tokens > 0
      assert r.budget.prm_flops == b.budget.prm_flops > 0
  # The confidence alone: no model of its own, 0 verifier FLOPs.
  conf_only = ensemble.EnsembleVerifier(ensemble.Ensemble(("conf_logprob_mean",
                                                           "policy_likelihood"), (1.0, 0.5), 0.1),
                                        [mean, low], "ens_conf")
  for r in strategy.run(_ctx(core1, special_ids, conf_only), PROBLEMS):
    assert r.budget.prm_tokens == 0 and r.budget.prm_flops == 0 and r.budget.policy_tokens > 0


def test_an_ensemble_runs_at_most_one_model(parts):
  prm, mean, _ = parts
  with pytest.raises(ValueError, match="at most one"):
    ensemble.EnsembleVerifier(ensemble.Ensemble(("prm_last", "orm"), (1.0, 1.0), 0.0),
                              [prm, prm], "ens_x")
  with pytest.raises(ValueError, match="2 verifiers for an ensemble"):
    ensemble.EnsembleVerifier(ensemble.Ensemble(("prm_last",), (1.0,), 0.0), [prm, mean], "e")
