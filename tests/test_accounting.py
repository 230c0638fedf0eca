"""FLOPs arithmetic (ttc_jax.accounting) and the budgets the search reports with it."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import policy_config
from search_fixtures import Problem
from search_fixtures import Task
from search_fixtures import Tok
from ttc_jax import accounting
from ttc_jax.accounting import ModelCost
from ttc_jax.accounting import attention_flops
from ttc_jax.accounting import dense_flops
from ttc_jax.accounting import forward_flops
from ttc_jax.budget import Budget
from ttc_jax.models.transformer import Transformer
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.models.transformer import TransformerConfig
from ttc_jax.search import BestOfN
from ttc_jax.search import SearchContext
from ttc_jax.verifiers.value_head import ValueHeadVerifier

COST = ModelCost(params=1000, num_layers=3, attn_width=16)


def brute_force(cost: ModelCost, start: int, stop: int) -> int:
  """Token by token: 2N for the matmuls, Q K^T and A V over the t + 1 positions token t
  attends to (2 x 2 x layers x d_attn x (t + 1))."""
  return sum(2 * cost.params + 2 * 2 * cost.num_layers * cost.attn_width * (t + 1)
             for t in range(start, stop))


@pytest.mark.parametrize("start,stop", [(0, 0), (0, 1), (0, 17), (5, 5), (5, 6), (13, 200),
                                        (199, 200), (0, 4096)])
def test_forward_flops_is_the_sum_over_tokens(start, stop):
  assert forward_flops(COST, start, stop) == brute_force(COST, start, stop)
  assert (dense_flops(COST, start, stop) + attention_flops(COST, start, stop)
          == forward_flops(COST, start, stop))
  assert dense_flops(COST, start, stop) == 2 * COST.params * (stop - start)


def test_forward_flops_adds_up_and_broadcasts():
  # A row run in pieces (prompt, then steps) costs what it costs in one go.
  cuts = [0, 9, 10, 31, 32, 64]
  pieces = sum(forward_flops(COST, a, b) for a, b in zip(cuts, cuts[1:]))
  assert pieces == forward_flops(COST, 0, 64)
  starts = np.array([[0, 3], [7, 7]], np.int64)
  counts = np.array([[4, 0], [1, 12]], np.int64)
  got = forward_flops(COST, starts, starts + counts)
  assert isinstance(got, np.ndarray) and got.shape == (2, 2)
  want = [[brute_force(COST, s, s + c) for s, c in zip(rs, rc)] for rs, rc in zip(starts, counts)]
  np.testing.assert_array_equal(got, want)
  assert isinstance(forward_flops(COST, np.int64(2), 5), float)


def test_attention_grows_quadratically_and_matches_kaplan():
  a = lambda n: attention_flops(COST, 0, n)  # noqa: E731
  # Second differences are constant (4 L d_attn): a quadratic in the row length.
  assert {a(n + 1) - 2 * a(n) + a(n - 1) for n in (1, 10, 100, 1000)} == {
      4 * COST.num_layers * COST.attn_width}
  assert a(2000) / a(1000) == pytest.approx(4.0, rel=1e-3)
  # 2 x params x tokens alone undercounts long rows, more the longer they are.
  share = [a(n) / forward_flops(COST, 0, n) for n in (16, 256, 4096)]
  assert 0 < share[0] < share[1] < share[2]
  # Per token over a full window of n tokens: Kaplan's C_forward = 2N + 2 n_layer n_ctx
  # d_attn, with n_ctx = n + 1 (causal: (n + 1) / 2 positions on average, QK^T and AV).
  for n in (1, 64, 512):
    assert forward_flops(COST, 0, n) / n == pytest.approx(
        2 * COST.params + 2 * COST.num_layers * (n + 1) * COST.attn_width)


@pytest.mark.parametrize("start,stop,match", [
    (-1, 3, r"start=-1: expected positions >= 0"),
    (5, 4, r"\[start, stop\)=\[5, 4\): expected stop >= start"),
    (0.0, 3, r"start=0.0: expected integer token positions"),
    (0, 2.5, r"stop=2.5: expected integer token positions"),
    (True, 3, r"start=True: expected integer token positions"),
    (np.array([0, 4]), np.array([3, 2]), r"expected stop >= start"),
])
def test_forward_flops_rejects_bad_positions(start, stop, match):
  with pytest.raises(ValueError, match=match):
    forward_flops(COST, start, stop)


@pytest.mark.parametrize("m,r,want", [(14, 0.16, 14 + 3 * 13 / 0.16), (14, 0.79, 14 + 39 / 0.79),
                                      (14, 22.0, 14 + 39 / 22), (1, 0.16, 1.0)])
def test_matched_generations_at_the_papers_points(m, r, want):
  assert accounting.matched_generations(m, r) == pytest.approx(want)
  assert accounting.R_POINTS == (0.16, 0.79, 22.0)


def test_matched_generations_values_and_errors():
  assert accounting.matched_generations(14, 0.16) == 257.75
  # Equal FLOPs by construction: 6 M N Dp + 2 M N Di = 6 N Dp + 2 N Di X.
  n, dp, m = 3.0, 100.0, 14.0
  for r in accounting.R_POINTS:
    x = accounting.matched_generations(m, r)
    assert 6 * m * n * dp + 2 * m * n * r * dp == pytest.approx(6 * n * dp + 2 * n * r * dp * x)
  with pytest.raises(ValueError, match=r"param_ratio=0.5: expected a number >= 1"):
    accounting.matched_generations(0.5, 1.0)
  with pytest.raises(ValueError, match=r"r=0.0: expected D_inference / D_pretrain > 0"):
    accounting.matched_generations(14, 0.0)
  with pytest.raises(ValueError, match=r"r=nan"):
    accounting.matched_generations(14, float("nan"))


def test_training_flops():
  d = 123_456
  assert accounting.training_flops(COST, d) == 6 * COST.params * d  # 6 N D
  # With attention: 3 x the forward of D / n rows of n tokens.
  n = 64
  with_attn = accounting.training_flops(COST, d, seq_len=n)
  assert with_attn == pytest.approx(3 * d / n * brute_force(COST, 0, n))
  assert with_attn == pytest.approx(6 * COST.params * d
                                    + 6 * COST.num_layers * COST.attn_width * d * (n + 1))
  assert accounting.training_flops(COST, 0) == 0.0
  cfg = policy_config()
  assert accounting.pretraining_flops(cfg, d) == 6 * ModelCost.from_config(cfg).params * d
  assert accounting.pretraining_flops(COST, d, 64) == with_attn
  with pytest.raises(ValueError, match=r"tokens=-1: expected a token count >= 0"):
    accounting.training_flops(COST, -1)
  with pytest.raises(ValueError, match=r"seq_len=0: expected an integer >= 1"):
    accounting.training_flops(COST, 10, seq_len=0)


V = 64
_BASE = TransformerConfig(vocab_size=V, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                          mlp_dim=48, max_seq_len=32)


@pytest.mark.parametrize("kwargs", [dict(), dict(tie_embeddings=True), dict(head="value"),
                                    dict(num_kv_heads=None, head_dim=16, num_layers=3)],
                         ids=["gqa-untied", "tied", "value", "mha-head-dim-16"])
def test_model_cost_from_config_counts_the_matmul_parameters(kwargs):
  """N: every parameter but the input embedding table (a lookup); the head counts, and
  a tied table counts once (it is the head)."""
  cfg = dataclasses.replace(_BASE, **kwargs)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  total = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  lookup = 0 if cfg.tie_embeddings else model.embed[...].size
  cost = ModelCost.from_config(cfg)
  assert cost.params == total - lookup
  head = cfg.d_model * V if cfg.head == "lm" else 0
  assert cost.params == cfg.num_params(include_embeddings=False) + head
  assert cost.params == cfg.num_params() - (0 if cfg.tie_embeddings else V * cfg.d_model)
  assert cost.num_layers == cfg.num_layers
  # d_attn: the queries' width (grouped-query attention shares keys, not products).
  assert cost.attn_width == cfg.num_heads * cfg.dim_per_head


def test_model_cost_validation_and_round_trip():
  assert ModelCost.from_dict(COST.to_dict()) == COST
  assert ModelCost.from_dict(COST) is COST
  assert COST.to_dict() == {"params": 1000, "num_layers": 3, "attn_width": 16}
  for field in ("params", "num_layers", "attn_width"):
    with pytest.raises(ValueError, match=rf"ModelCost.{field}=0: expected an integer >= 1"):
      ModelCost(**{**COST.to_dict(), field: 0})
  with pytest.raises(ValueError, match=r"ModelCost.params=1.5"):
    ModelCost(1.5, 1, 1)
  with pytest.raises(ValueError, match=r"expected a dict with exactly the keys"):
    ModelCost.from_dict({"params": 3})
  with pytest.raises(ValueError, match=r"expected a dict with exactly the keys"):
    ModelCost.from_dict(3)


def test_budget_keeps_policy_and_verifier_flops_apart():
  pol, prm = COST, ModelCost(params=77, num_layers=1, attn_width=8)
  b = Budget(generations=2)
  b.add_policy(pol, 0, 10)  # a prompt
  b.add_prm(prm, 0, 10)
  b.add_policy(pol, 10, 5)  # a step after it
  b.add_prm(prm, 10, 5)
  b.add_policy(pol, 10, 0)  # an empty step costs nothing
  assert b.policy_tokens == b.prm_tokens == 15
  assert b.policy_flops == brute_force(pol, 0, 15)
  assert b.prm_flops == brute_force(prm, 0, 15)
  assert b.flops == b.policy_flops + b.prm_flops
  total = b + b
  assert (total.generations, total.policy_tokens, total.policy_flops, total.prm_flops) == (
      4, 30, 2 * b.policy_flops, 2 * b.prm_flops)
  assert b.to_dict() == {"generations": 2, "policy_tokens": 15, "prm_tokens": 15,
                         "policy_flops": b.policy_flops, "prm_flops": b.prm_flops,
                         "flops": b.flops}
  with pytest.raises(TypeError, match=r"cost=1000: expected a ttc_jax.accounting.ModelCost"):
    b.add_policy(1000, 0, 5)
  with pytest.raises(ValueError, match=r"count=-1: expected a token count"):
    b.add_prm(prm, 0, -1)
  with pytest.raises(ValueError, match=r"start=-2: expected positions >= 0"):
    b.add_prm(prm, -2, 1)


# ----------------------------------------------------------- budgets in the search
def test_best_of_n_budget_is_the_closed_form(core1, special_ids):
  cfg = policy_config()
  # A PRM of another shape than the policy, so the two costs differ.
  prm_cfg = dataclasses.replace(cfg, head="value", num_layers=1, num_heads=2, num_kv_heads=1)
  prm = ValueHeadVerifier(Transformer(prm_cfg, rngs=nnx.Rngs(7)), pad_id=0)
  ctx = SearchContext(core=core1, prm=prm, task=Task(),
                      tokenizer=Tok(special_ids.eos_ids[0], special_ids.step_ids[0]),
                      seed=1, sp=SamplingParams(temperature=1.0, max_new_tokens=24),
                      max_step_tokens=8)
  assert ctx.policy_cost == ModelCost.from_config(cfg)
  assert ctx.prm_cost == ModelCost.from_config(prm_cfg) != ctx.policy_cost
  problems = [Problem(0, "5 9 12 7", "20"), Problem(1, "14 3 8 8 8 8 8 8 8 2", "11")]
  results = BestOfN(n=3).run(ctx, problems)
  for problem, res in zip(problems, results):
    p = len(problem.question.split()) + 1  # BOS + the prompt
    gens = [len(c.tokens) for c in res.candidates]
    assert len(gens) == 3 and sum(gens) > 0
    # The prompt once from position 0; each sample after its prompt.
    for cost, got in ((ctx.policy_cost, res.budget.policy_flops),
                      (ctx.prm_cost, res.budget.prm_flops)):
      want = brute_force(cost, 0, p) + sum(brute_force(cost, p, p + g) for g in gens)
      assert got == want
      closed = (2 * cost.params * (p + sum(gens)) + 2 * cost.num_layers * cost.attn_width
                * (p * (p + 1) + sum((p + g) * (p + g + 1) - p * (p + 1) for g in gens)))
      assert got == closed
    assert res.budget.policy_tokens == res.budget.prm_tokens == p + sum(gens)
    assert res.budget.flops == res.budget.policy_flops + res.budget.prm_flops
    assert res.budget.flops > 2 * (ctx.policy_cost.params + ctx.prm_cost.params) * (p + sum(gens))
