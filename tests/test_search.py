"""Search: vectorized beam / lookahead search against a plain reference; budgets; pools."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import assert_close
from conftest import policy_config
from search_fixtures import PROBLEMS
from search_fixtures import Problem
from search_fixtures import Task
from search_fixtures import Tok
from ttc_jax.accounting import forward_flops
from ttc_jax.models.transformer import Transformer
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.sampling.core import choose_tokens
from ttc_jax.sampling.core import process_logits
from ttc_jax.sampling.core import row_keys
from ttc_jax.sampling import streams
from ttc_jax.sampling import utilization
from ttc_jax.sampling.solutions import step_ends
from ttc_jax.search import BeamSearch
from ttc_jax.search import BestOfN
from ttc_jax.search import DVTS
from ttc_jax.search import ParticleFilter
from ttc_jax.search import SearchContext
from ttc_jax.search import common
from ttc_jax.verifiers import aggregation
from ttc_jax.verifiers.value_head import ValueHeadVerifier


@pytest.fixture(scope="module")
def prm(core1):
  cfg = policy_config()
  return ValueHeadVerifier(Transformer(type(cfg)(**{**cfg.__dict__, "head": "value"}),
                                       rngs=nnx.Rngs(7)), pad_id=0)


@pytest.fixture(scope="module")
def ctx(core1, prm, special_ids):
  tok = Tok(special_ids.eos_ids[0], special_ids.step_ids[0])
  # Rounds x step length stay inside the context and the token cap: nothing is cut.
  return SearchContext(core=core1, prm=prm, task=Task(), tokenizer=tok,
                       seed=3, run=2, sp=SamplingParams(temperature=1.0, max_new_tokens=48),
                       max_step_tokens=8)


_FORWARDS = {}


def _padded_forward(graphdef, params, length=64):
  """Full forward pass (no cache) of one right-padded row; output at its last token."""
  key = (id(graphdef), id(params))
  if key not in _FORWARDS:
    @jax.jit
    def fwd(tokens, valid, last):
      out, _ = nnx.merge(graphdef, params)(tokens[None], valid[None])
      return out[0, last]

    def call(seq):
      tokens = np.zeros(length, np.int32)
      tokens[:len(seq)] = seq
      return fwd(tokens, np.arange(length) < len(seq), len(seq) - 1)

    _FORWARDS[key] = call
  return _FORWARDS[key]


def _reference_beam(strategy, ctx, problem):
  """Unvectorized beam search: one problem, one candidate at a time, every prefix
  re-encoded by a full forward pass (no cache), same keys, caps and selection rule.
  Returns the pool, the policy and PRM token counts and the (start, count) position
  ranges the cached search runs through both models (what its FLOPs count)."""
  policy = _padded_forward(ctx.core.graphdef, ctx.core.params)
  prm = _padded_forward(ctx.prm.incremental.graphdef, ctx.prm.incremental.params)
  tok = ctx.tokenizer
  prompt = tok.encode(ctx.task.format_prompt(problem), bos=True)
  n, m = strategy.n, getattr(strategy, "width", 1)
  sp = ctx.step_params()
  greedy = SamplingParams(temperature=0.0, max_new_tokens=ctx.max_step_tokens, stop_at_step=True)
  tokens_policy = tokens_prm = len(prompt)
  segments = [(0, len(prompt))]  # the prompt once, from position 0

  def room(length):
    """Tokens a solution of ``length`` may still add in one step: its cap, the context."""
    return max(0, min(ctx.max_step_tokens, ctx.max_new_tokens - length,
                      ctx.core.config.max_seq_len - len(prompt) - length))

  def step(seq, key, params):
    out = []
    for t in range(room(len(seq))):
      logits = policy(prompt + seq + out)[None]
      nxt = int(choose_tokens(process_logits(logits, params), key[None], jnp.int32(t), params)[0])
      out.append(nxt)
      if nxt in (tok.eos_id, tok.step_id):
        break
    return out

  def score(seq):
    return float(jax.nn.sigmoid(prm(prompt + seq)))

  seqs = [[] for _ in range(n)]
  active = [True] * n
  parent_score = [None] * n  # each beam's score at its previous step (None: the prompt)
  alpha = getattr(strategy, "advantage", 0.0)
  pool = []
  for rnd in range(strategy.max_rounds):
    if not any(active):
      break
    scores, select, ended = {}, {}, {}
    for j in range(n):
      if not active[j]:
        continue
      key = streams.keys(ctx.seed, "search", problem.index, j, rnd, ctx.run)[0]
      new = step(seqs[j], key, sp)
      tokens_policy += len(new)
      segments.append((len(prompt) + len(seqs[j]), len(new)))
      tokens_prm += len(new)
      seqs[j] = seqs[j] + new
      ended[j] = new[-1] == tok.eos_id
      scores[j] = select[j] = score(seqs[j])
      if strategy.lookahead and not ended[j] and room(len(seqs[j])):
        roll = list(seqs[j])
        for _ in range(strategy.lookahead):
          extra = step(roll, key, greedy)
          if not extra:
            break
          tokens_policy += len(extra)
          segments.append((len(prompt) + len(roll), len(extra)))
          tokens_prm += len(extra)
          roll += extra
          if extra[-1] == tok.eos_id:
            break
        select[j] = score(roll)
    for j in sorted(ended):
      if ended[j]:
        pool.append((seqs[j], scores[j]))
    # Unfinished beams without room left (cap or context) are cut, never expanded.
    alive = [j for j in sorted(select) if not ended[j] and room(len(seqs[j]))]
    if isinstance(strategy, ParticleFilter):
      if alive:  # resample N particles from the unfinished and the finished ones
        logits = [np.log(min(max(x, 1e-7), 1 - 1e-7) / (1 - min(max(x, 1e-7), 1 - 1e-7)))
                  / strategy.temperature for x in [select[j] for j in alive] + [c[1] for c in pool]]
        w = np.exp(np.array(logits) - max(logits))
        rng = np.random.default_rng([ctx.seed, streams.STREAMS["resample"], problem.index, rnd,
                                     ctx.run])
        draws = sorted(rng.choice(len(w), size=n, replace=True, p=w / w.sum()).tolist())
        parents = [alive[d] for d in draws if d < len(alive)]
        pool = [pool[d - len(alive)] for d in draws if d >= len(alive)]
      else:
        parents = []
      parents += [None] * (n - len(parents))
    elif isinstance(strategy, DVTS):  # subtree g: slots g*M..g*M+M-1, its best row goes on
      parents = []
      for g in range(n // m):
        best = sorted((j for j in alive if j // m == g), key=lambda j: (-select[j], j))[:1]
        parents += [best[0] if best else None] * m
    else:  # beam: by Q + alpha x (Q(s_h) - Q(s_{h-1})); the first step's advantage is 0
      advantage = {j: 0.0 if parent_score[j] is None else scores[j] - parent_score[j]
                   for j in alive}
      kept = sorted(alive, key=lambda j: (-(select[j] + alpha * advantage[j]), j))[:n // m]
      parents = [kept[i // m] if i // m < len(kept) else None for i in range(n)]
    seqs = [list(seqs[p]) if p is not None else [] for p in parents]
    parent_score = [scores[p] if p is not None else None for p in parents]
    active = [p is not None for p in parents]
  if not isinstance(strategy, ParticleFilter):
    pool = sorted(pool, key=lambda c: -c[1])[:n]
  return pool, tokens_policy, tokens_prm, segments


def _as_pool(result):
  return [(c.tokens, c.score) for c in result.candidates]


@pytest.mark.parametrize("strategy", [BeamSearch(n=4, width=2, max_rounds=4),
                                      BeamSearch(n=4, width=4, max_rounds=3),
                                      BeamSearch(n=4, width=2, lookahead=1, max_rounds=3),
                                      BeamSearch(n=8, width=2, max_rounds=4, advantage=3.0),
                                      DVTS(n=4, width=2, max_rounds=4),
                                      ParticleFilter(n=4, max_rounds=4),
                                      ParticleFilter(n=3, temperature=0.5, max_rounds=4)],
                         ids=["beam-4-2", "beam-4-4", "lookahead-1", "beam-8-2-advantage",
                              "dvts-4-2", "particles-4", "particles-3-t0.5"])
def test_vectorized_search_matches_the_reference(ctx, strategy):
  results = strategy.run(ctx, PROBLEMS)
  total_finished = 0
  for problem, res in zip(PROBLEMS, results):
    pool, tokens_policy, tokens_prm, segments = _reference_beam(strategy, ctx, problem)
    got = _as_pool(res)
    assert [c[0] for c in got] == [c[0] for c in pool]
    assert_close([c[1] for c in got], [c[1] for c in pool])
    # Budgets are exact: every token through each model once, prompts once.
    assert res.budget.policy_tokens == tokens_policy
    assert res.budget.prm_tokens == tokens_prm
    assert res.budget.generations == strategy.n * (strategy.lookahead + 1)
    # FLOPs: each run of tokens at its positions (attention included), models apart.
    for cost, flops in ((ctx.policy_cost, res.budget.policy_flops),
                        (ctx.prm_cost, res.budget.prm_flops)):
      assert flops == pytest.approx(sum(forward_flops(cost, s, s + c) for s, c in segments),
                                    rel=1e-12)
    assert res.budget.flops == res.budget.policy_flops + res.budget.prm_flops
    total_finished += len(got)
  assert total_finished > 0, "the tiny model should finish some beams"


def test_only_finished_candidates_are_returned(ctx):
  eos = ctx.tokenizer.eos_id
  one_round = BeamSearch(n=4, width=2, max_rounds=1).run(ctx, PROBLEMS)
  longer = BeamSearch(n=4, width=2, max_rounds=4).run(ctx, PROBLEMS)
  for a, b in zip(one_round, longer):
    for c in a.candidates + b.candidates:
      assert c.tokens[-1] == eos
    assert len(a.candidates) <= len(b.candidates) <= 4
    # After one round, exactly the first steps that ended in EOS are returned.
    assert all(len(c.tokens) <= ctx.max_step_tokens for c in a.candidates)
  assert sum(len(b.candidates) for b in longer) > sum(len(a.candidates) for a in one_round)


def test_the_process_advantage_reorders_beams_of_different_parents(ctx):
  """Q + alpha x A (A: the step's change of the PRM score) is not Q: it keeps other beams
  (the reference search above checks which); A is 0 in the first round, whose beams share
  the prompt."""
  plain = BeamSearch(n=8, width=2, max_rounds=4).run(ctx, PROBLEMS)
  adv = BeamSearch(n=8, width=2, max_rounds=4, advantage=3.0).run(ctx, PROBLEMS)
  assert any(_as_pool(a) != _as_pool(b) for a, b in zip(plain, adv))
  # Two rounds: one selection, among the first steps (a selection after the last round
  # changes nothing returned).
  two = BeamSearch(n=8, width=2, max_rounds=2)
  for a, b in zip(two.run(ctx, PROBLEMS),
                  BeamSearch(n=8, width=2, max_rounds=2, advantage=3.0).run(ctx, PROBLEMS)):
    assert _as_pool(a) == _as_pool(b)
  with pytest.raises(ValueError, match="advantage=-1"):
    BeamSearch(n=4, width=2, advantage=-1)


@pytest.mark.parametrize("strategy", [BeamSearch(n=4, width=2, max_rounds=4), BestOfN(n=4),
                                      ParticleFilter(n=4, max_rounds=6),
                                      BeamSearch(n=4, width=2, max_rounds=4, advantage=1.0)],
                         ids=["beam", "best-of-n", "particles", "beam-advantage"])
def test_problems_do_not_mix_in_a_batch(ctx, strategy):
  together = strategy.run(ctx, PROBLEMS)
  for problem, res in zip(PROBLEMS, together):
    alone = strategy.run(ctx, [problem])[0]
    assert [c[0] for c in _as_pool(alone)] == [c[0] for c in _as_pool(res)]
    assert_close([c[1] for c in _as_pool(alone)], [c[1] for c in _as_pool(res)])
    assert alone.answer == res.answer
    assert alone.budget.policy_tokens == res.budget.policy_tokens


@pytest.mark.parametrize("strategy", [BeamSearch(n=4, width=2, max_rounds=4),
                                      BeamSearch(n=4, width=2, lookahead=1, max_rounds=3)],
                         ids=["beam", "lookahead"])
def test_the_meter_parts_a_searchs_wasted_row_steps(ctx, strategy, monkeypatch):
  # Issue 28, item 3: of the row-steps a search pays, the idle ones (rows padding the
  # frontier to its compiled size, rows a lookahead call leaves out) apart from the rows
  # whose step ended while the call ran on.
  calls = []
  sample = ctx.core.sample

  def counted(state, keys, sp, *, active, **kwargs):
    out = sample(state, keys, sp, active=active, **kwargs)
    calls.append((int(out.steps), int((~np.asarray(active)).sum()), int(out.row_steps)))
    return out

  monkeypatch.setattr(ctx.core, "sample", counted)
  utilization.take()
  strategy.run(ctx, PROBLEMS[:3])  # 12 rows in a frontier of 16
  meter = utilization.take()
  assert meter.calls == len(calls) and meter.row_steps == sum(c[2] for c in calls)
  assert meter.idle_steps == sum(steps * idle for steps, idle, _ in calls) > 0
  assert meter.ended_share == pytest.approx(
      (meter.row_steps - meter.alive_steps - meter.idle_steps) / meter.row_steps)
  assert 0 < meter.ended_share < 1 and meter.to_json()["idle_steps"] == meter.idle_steps
  with pytest.raises(ValueError, match="idle_steps=3 must lie in"):
    utilization.Meter().add(row_steps=4, alive_steps=2, idle_steps=3)


def test_best_of_n_scores_every_step_and_counts_tokens(ctx):
  res = BestOfN(n=4, step_aggregation="min").run(ctx, PROBLEMS[:1])[0]
  prm = nnx.merge(ctx.prm.incremental.graphdef, ctx.prm.incremental.params)
  prompt = ctx.tokenizer.encode(PROBLEMS[0].question, bos=True)
  total = len(prompt)
  for c in res.candidates:
    values = np.asarray(jax.nn.sigmoid(prm(jnp.asarray([prompt + c.tokens]))[0][0]))
    ends = [len(prompt) + i for i in step_ends(c.tokens, ctx.tokenizer.step_ids,
                                               ctx.tokenizer.eos_ids)]
    assert_close(c.score, values[ends].min())
    total += len(c.tokens)
  assert res.budget.policy_tokens == res.budget.prm_tokens == total
  assert res.budget.generations == 4


def test_search_selects_answers_with_the_one_aggregation(ctx):
  """finish() chooses by verifiers.aggregation: weighted sums, ties to the first seen."""
  cands = [common.Candidate([], 0.9, "1", False), common.Candidate([], 0.5, "2", True),
           common.Candidate([], 0.45, "2", True), common.Candidate([], 0.3, None, False)]
  (res,) = common.finish(ctx, [PROBLEMS[0]], [cands], [None])
  assert res.answer == "2" == aggregation.select_answer(["1", "2", "2", None],
                                                        [0.9, 0.5, 0.45, 0.3])
  # An exact tie (0.5 + 0.4 = 0.9) goes to the answer seen first.
  assert aggregation.select_answer(["1", "2", "2"], [0.9, 0.5, 0.4]) == "1"
  assert aggregation.select_answer(["2", "1", "2"], [0.5, 0.9, 0.4]) == "2"
  (res,) = common.finish(ctx, [PROBLEMS[0]], [cands], [None], selection="vanilla")
  assert res.answer == "1"
  (res,) = common.finish(ctx, [PROBLEMS[0]], [cands[3:]], [None])
  assert res.answer is None and not res.correct


def test_bad_search_arguments():
  with pytest.raises(ValueError, match="M dividing n"):
    BeamSearch(n=6, width=4)
  with pytest.raises(ValueError, match=r"selection 'best'.*\('majority', 'vanilla', 'weighted'\)"):
    BestOfN(n=4, selection="best")


def test_compacting_the_cache_does_not_change_what_is_generated(core1, prompts):
  """Rows of uneven lengths leave holes; compacting them keeps every continuation."""
  tokens, valid = prompts
  greedy_step = SamplingParams(temperature=0.0, max_new_tokens=8, stop_at_step=True)
  greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
  keys = row_keys(0, np.arange(tokens.shape[0]))
  outs = []
  for compact in (False, True):
    state = core1.prefill(tokens, valid, cache_size=40)
    first = core1.sample(state, keys, greedy_step)  # uneven step lengths -> holes
    state = core1.gather(first.state, np.arange(tokens.shape[0]), compact=compact)
    outs.append((np.asarray(first.lengths), int(state.cache.index),
                 core1.sample(state, keys, greedy)))
  (lengths, loose, a), (_, tight, b) = outs
  assert tight < loose
  assert tight == int((valid.sum(1) + lengths).max())  # the longest row, not the sum
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  assert_close(np.asarray(a.logprobs), np.asarray(b.logprobs))


# ------------------------------------------------------------------- the edges
# A problem whose beams fill the context, batched with short ones; and token caps
# that bind. Every problem's result must equal the reference (and itself alone).
LONG = Problem(21, " ".join(str(3 + i % 50) for i in range(44)), "7")
LONG_PROMPT = 45  # BOS + 44 tokens: 19 tokens of room in the 64-token context


@pytest.fixture(scope="module")
def edge_ctx(core1, prm, special_ids):
  tok = Tok(special_ids.eos_ids[0], special_ids.step_ids[0])
  # The long problem reaches the 64-token context after ~19 new tokens; the short
  # ones are cut by their cap of 40 tokens.
  return SearchContext(core=core1, prm=prm, task=Task(), tokenizer=tok, seed=5,
                       sp=SamplingParams(temperature=1.0, max_new_tokens=40),
                       max_step_tokens=8)


@pytest.mark.parametrize("strategy", [BeamSearch(n=4, width=2, max_rounds=8),
                                      BeamSearch(n=4, width=2, lookahead=2, max_rounds=8),
                                      DVTS(n=4, width=2, max_rounds=8),
                                      ParticleFilter(n=4, max_rounds=8)],
                         ids=["beam", "lookahead-2", "dvts", "particles"])
def test_search_at_the_context_limit_is_batch_independent(edge_ctx, strategy):
  problems = [LONG] + PROBLEMS
  together = strategy.run(edge_ctx, problems)
  longest_short = 0
  for problem, res in zip(problems, together):
    alone = strategy.run(edge_ctx, [problem])[0]
    pool, tokens_policy, _, _ = _reference_beam(strategy, edge_ctx, problem)
    for got in (res, alone):
      assert [c[0] for c in _as_pool(got)] == [c[0] for c in pool]
      assert_close([c[1] for c in _as_pool(got)], [c[1] for c in pool])
      assert got.budget.policy_tokens == tokens_policy
    assert alone.answer == res.answer
    for c in res.candidates:
      assert len(c.tokens) <= edge_ctx.max_new_tokens
      assert len(c.tokens) + len(problem.question.split()) + 1 <= edge_ctx.core.config.max_seq_len
    if problem is not LONG:
      longest_short = max([longest_short] + [len(c.tokens) for c in res.candidates])
  # The check has teeth: short problems finished beams longer than the long problem's
  # room (a shared context would have cut them).
  assert longest_short > edge_ctx.core.config.max_seq_len - LONG_PROMPT, longest_short


def test_best_of_n_caps_each_solution_and_stops_at_the_context(edge_ctx):
  problems = [LONG] + PROBLEMS
  together = BestOfN(n=4).run(edge_ctx, problems)
  for problem, res in zip(problems, together):
    alone = BestOfN(n=4).run(edge_ctx, [problem])[0]
    assert [c.tokens for c in alone.candidates] == [c.tokens for c in res.candidates]
    room = min(edge_ctx.max_new_tokens, edge_ctx.core.config.max_seq_len - LONG_PROMPT) \
        if problem is LONG else edge_ctx.max_new_tokens
    assert all(len(c.tokens) <= room for c in res.candidates)
    assert sum(len(c.tokens) == room for c in res.candidates) or problem is not LONG


def test_dvts_and_particles_are_not_beam_search(ctx):
  """The checks above have teeth: on these problems DVTS keeps other beams than beam
  search of the same width, and particle filtering's resampling duplicates particles."""
  beam = BeamSearch(n=4, width=2, max_rounds=4).run(ctx, PROBLEMS)
  dvts = DVTS(n=4, width=2, max_rounds=4).run(ctx, PROBLEMS)
  assert any(_as_pool(a) != _as_pool(b) for a, b in zip(beam, dvts))
  particles = ParticleFilter(n=4, max_rounds=4).run(ctx, PROBLEMS)
  pools = [[tuple(c.tokens) for c in r.candidates] for r in particles]
  assert any(len(set(p)) < len(p) for p in pools), pools


def test_resampling_weights():
  from ttc_jax.search.beam import resampling_weights
  w = resampling_weights(np.array([0.5, 0.75, 0.0, 1.0]), 1.0)
  odds = np.array([1.0, 3.0, 1e-7 / (1 - 1e-7), (1 - 1e-7) / 1e-7])
  assert_close(w, odds / odds.sum())
  assert_close(resampling_weights(np.array([0.5, 0.75]), 0.5), np.array([1, 9]) / 10)
  with pytest.raises(ValueError, match="temperature"):
    ParticleFilter(n=4, temperature=0)
  with pytest.raises(ValueError, match="dividing n"):
    DVTS(n=6, width=4)


def test_search_then_revise_names_read_back():
  from ttc_jax.search import registry
  name = registry.name_of(registry.HYBRID, search="dvts_m4", selection="vote")
  m = registry.method(name)
  assert (m.family, m.params) == (registry.HYBRID, {"search": "dvts_m4", "selection": "vote"})
  assert m.label({"n": 8}) == "DVTS M=4, then revised (vote)"
  assert registry.method("hybrid_best_of_n_weighted_last").params["search"] == \
      "best_of_n_weighted"
  for search, selection in (("revisions_hier_orm", "last"), ("beam_m4", "best")):
    with pytest.raises(ValueError, match="expected a search method"):
      registry.name_of(registry.HYBRID, search=search, selection=selection)
  assert registry.method("hybrid_revisions_hier_orm_last").family == "other"
