"""Tests for the sampling core: correctness of the token choice, stop rules,
continuation / gather, per-row randomness and input validation.

All runs use the session SamplingCore ``core1`` (1-device mesh) and the standard
shapes of conftest.py (16 prompts x 8 tokens, 40-slot cache, 16 new tokens),
so most tests reuse the same compiled prefill and decode loop.
"""

import collections
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from conftest import assert_close
from conftest import CACHE_SIZE
from conftest import GREEDY
from conftest import GREEDY_STEP
from conftest import NEW_TOKENS
from conftest import NUM_PROMPTS
from conftest import PAD_ID
from conftest import PROMPT_LEN
from conftest import SAMPLE
from conftest import SAMPLE_STEP
from conftest import TOP_K
from conftest import TOP_K_P
from conftest import TOP_P
from conftest import VOCAB
from conftest import as_np
from conftest import continuation_inputs
from conftest import make_prompts
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.sampling.core import SpecialIds
from ttc_jax.sampling.core import choose_tokens
from ttc_jax.sampling.core import process_logits
from ttc_jax.sampling.core import row_keys
from ttc_jax.sampling.solutions import step_ends

N, L, B = NEW_TOKENS, PROMPT_LEN, NUM_PROMPTS


def generated_logits(full_logits, prompts, tokens, lengths):
  """No-cache logits (B, n, V) predicting each generated token."""
  seq, val = continuation_inputs(*prompts, tokens, lengths)
  n = np.asarray(tokens).shape[1]
  return full_logits(seq, val)[:, L - 1:L - 1 + n]


def log_softmax(x):
  return np.asarray(jax.nn.log_softmax(jnp.asarray(x, jnp.float32), axis=-1))


def gen_mask(lengths, n=N):
  return np.arange(n)[None] < np.asarray(lengths)[:, None]


def assert_same_samples(got, ref, rows=None):
  """Equal (tokens, lengths, stopped) and close logprobs; ``ref`` rows re-selected."""
  if rows is not None:
    ref = tuple(x[rows] for x in ref)
  names = ("tokens", "logprobs", "lengths", "stopped")
  for name, a, b in zip(names, got, ref):
    if name == "logprobs":
      assert_close(a, b, err_msg=name)
    else:
      np.testing.assert_array_equal(a, b, err_msg=name)


def check_stop_rules(out, stop_ids, n=N):
  """Rows end at their first stop token or at n tokens; padding after length."""
  toks, logp, lens, stopped = as_np(out)
  assert toks.shape == logp.shape == (len(lens), n)
  mask = gen_mask(lens, n)
  assert ((lens >= 1) & (lens <= n)).all(), lens
  np.testing.assert_array_equal(toks[~mask], PAD_ID)
  np.testing.assert_array_equal(logp[~mask], 0.0)
  assert (logp[mask] <= 0).all()
  is_stop = np.isin(toks, list(stop_ids))
  last = toks[np.arange(len(lens)), lens - 1]
  for r in range(len(lens)):
    assert not is_stop[r, :lens[r] - 1].any(), f"row {r} ran past a stop token: {toks[r]}"
  np.testing.assert_array_equal(stopped, np.isin(last, list(stop_ids)))
  assert (lens[~stopped] == n).all(), "a row ended early without a stop token"
  return toks, logp, lens, stopped


# ----------------------------------------------------------------------------
# Token choice
# ----------------------------------------------------------------------------
def test_greedy_is_argmax_of_full_forward(core1, run, prompts, full_logits, special_ids):
  toks, logp, lens, stopped = check_stop_rules(run(core1, GREEDY), [special_ids.eos_ids[0]])
  ref = generated_logits(full_logits, prompts, toks, lens)
  mask = gen_mask(lens)
  assert mask.sum() >= 4 * B, "too few generated tokens to compare"
  np.testing.assert_array_equal(toks[mask], ref.argmax(-1)[mask])
  # logprobs are the model's log-probabilities of the chosen tokens.
  ref_logp = np.take_along_axis(log_softmax(ref), toks[..., None], -1)[..., 0]
  assert_close(logp[mask], ref_logp[mask])

def test_suppressed_ids_are_never_sampled(policy_model, core1, run, prompts, full_logits,
                                          special_ids):
  """Suppressed tokens (the unused pieces of a padded vocab) never appear; greedy takes the
  best other token; log-probabilities stay the model's own."""
  toks = np.concatenate([as_np(run(core1, sp))[0] for sp in (GREEDY, SAMPLE)])
  counts = np.bincount(toks.ravel(), minlength=VOCAB)
  counts[[PAD_ID, *special_ids.eos_ids]] = -1
  suppress = tuple(int(i) for i in np.argsort(-counts)[:3])  # what the model emits most
  core = SamplingCore(policy_model, SpecialIds(pad_id=PAD_ID, eos_ids=special_ids.eos_ids,
                                               suppress_ids=suppress))
  toks, logp, lens, _ = check_stop_rules(run(core, GREEDY), special_ids.eos_ids)
  mask = gen_mask(lens)
  ref = generated_logits(full_logits, prompts, toks, lens)
  allowed = ref.copy()
  allowed[..., list(suppress)] = -np.inf
  np.testing.assert_array_equal(toks[mask], allowed.argmax(-1)[mask])
  ref_logp = np.take_along_axis(log_softmax(ref), toks[..., None], -1)[..., 0]
  assert_close(logp[mask], ref_logp[mask])
  sampled = as_np(run(core, SAMPLE))[0]
  assert not np.isin(sampled, suppress).any()
  with pytest.raises(ValueError, match="also eos/step ids"):
    SpecialIds(eos_ids=(2,), suppress_ids=(2, 5))



def _chisquare_pvalue(counts, probs):
  """Chi-square goodness of fit; the least likely bins are merged until every
  bin expects >= 5 counts."""
  probs = np.asarray(probs, np.float64)
  expected = probs / probs.sum() * counts.sum()
  order = np.argsort(expected)
  merged, acc = [], 0.0
  for i in order:
    if expected[i] >= 5 and acc >= 5:
      break
    merged.append(i)
    acc += expected[i]
  keep = np.setdiff1d(np.arange(len(counts)), merged)
  obs = np.append(counts[keep], counts[merged].sum())
  exp = np.append(expected[keep], expected[merged].sum())
  assert len(obs) >= 10, "distribution too peaked for a meaningful test"
  return scipy.stats.chisquare(obs, exp).pvalue


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_first_token_frequencies_match_softmax(core1, prompts, full_logits, temperature):
  num = 20000
  tokens, valid = prompts
  ref = full_logits(*continuation_inputs(tokens, valid, np.zeros((B, N)), np.zeros(B)))
  ref = ref[0, L - 1]  # Row 0 (a full-length prompt), next-token logits.
  state = core1.prefill(tokens[:1], valid[:1], cache_size=L + 1)
  state = core1.gather(state, np.zeros(num, np.int32))
  sp = SamplingParams(temperature=temperature, max_new_tokens=1)
  out = core1.sample(state, row_keys(11, 0, np.arange(num)), sp)
  toks = np.asarray(out.tokens)[:, 0]
  counts = np.bincount(toks, minlength=VOCAB)
  p_right = _chisquare_pvalue(counts, jax.nn.softmax(ref / temperature))
  # The same test on the same samples must reject a wrong distribution, so it
  # has power at this sample size (softmax at twice the temperature).
  p_wrong = _chisquare_pvalue(counts, jax.nn.softmax(ref / (2 * temperature)))
  assert p_right > 1e-3, (p_right, counts)
  assert p_wrong < 1e-3, (p_wrong, counts)
  # logprobs are under the unmodified (temperature 1) distribution.
  assert_close(np.asarray(out.logprobs)[:, 0], log_softmax(ref)[toks])


def _allowed(logits, sp, tol=1e-4):
  """Tokens top-k / top-p may emit given raw logits (..., V), with a small slack
  for float differences between the cached and the no-cache pass."""
  z = np.asarray(logits, np.float64) / sp.temperature
  allowed = np.ones(z.shape, bool)
  if sp.top_k:
    kth = -np.sort(-z, -1)[..., sp.top_k - 1:sp.top_k]
    allowed &= z >= kth - tol
  if sp.top_p < 1:
    zz = np.where(allowed, z, -np.inf)
    p = np.exp(zz - zz.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    order = np.argsort(-p, -1)
    ps = np.take_along_axis(p, order, -1)
    before_sorted = np.cumsum(ps, -1) - ps  # mass of the more likely tokens
    before = np.empty_like(before_sorted)
    np.put_along_axis(before, order, before_sorted, -1)
    allowed &= before < sp.top_p + tol
  return allowed


@pytest.mark.parametrize("sp", [TOP_K, TOP_P, TOP_K_P], ids=["top_k", "top_p", "top_k_p"])
def test_top_k_top_p_stay_in_allowed_set(core1, run, prompts, full_logits, special_ids, sp):
  out = run(core1, sp, keys=row_keys(1, np.arange(B)))
  toks, logp, lens, _ = check_stop_rules(out, [special_ids.eos_ids[0]])
  ref = generated_logits(full_logits, prompts, toks, lens)
  mask = gen_mask(lens)
  allowed = _allowed(ref, sp)
  chosen_ok = np.take_along_axis(allowed, toks[..., None], -1)[..., 0]
  bad = np.argwhere(mask & ~chosen_ok)
  assert not len(bad), f"tokens outside the allowed set at (row, step) {bad.tolist()}"
  # The restriction bites (a test against the full vocabulary would be vacuous)
  # and sampling is not greedy.
  assert allowed[mask].sum(-1).mean() < VOCAB / 4
  strict = _allowed(ref, sp, tol=-1e-4)  # the allowed set without slack
  assert (strict[mask].sum(-1) > 1).any()
  assert (toks[mask] != ref.argmax(-1)[mask]).mean() > 0.1
  # logprobs are under the model's unmodified distribution, not the truncated one.
  ref_logp = np.take_along_axis(log_softmax(ref), toks[..., None], -1)[..., 0]
  assert_close(logp[mask], ref_logp[mask])


def test_top_k_1_equals_greedy(core1, run):
  greedy = as_np(run(core1, GREEDY))
  top1 = as_np(run(core1, SamplingParams(temperature=1.0, top_k=1, max_new_tokens=N),
                   keys=row_keys(2, np.arange(B))))
  for a, b in zip(greedy[::2], top1[::2]):  # tokens, lengths
    np.testing.assert_array_equal(a, b)


def _finite(x):
  return set(np.flatnonzero(np.isfinite(np.asarray(x))).tolist())


def test_process_logits_temperature_and_greedy():
  logits = jnp.array([[1.0, -2.0, 0.5, 3.0]])
  assert_close(process_logits(logits, SamplingParams(temperature=0.5)), logits / 0.5)
  # Greedy leaves the logits alone (top-k/p are irrelevant to argmax).
  greedy = SamplingParams(temperature=0.0, top_k=1, top_p=0.1)
  np.testing.assert_array_equal(process_logits(logits, greedy), logits)


def test_process_logits_top_k():
  logits = jnp.array([[1.0, 3.0, 2.0, 0.0, -1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
  out = np.asarray(process_logits(logits, SamplingParams(top_k=2)))
  assert _finite(out[0]) == {1, 2} and _finite(out[1]) == {0, 1}
  np.testing.assert_array_equal(out[0, [1, 2]], [3.0, 2.0])  # kept logits unchanged
  # top_k >= vocab: nothing removed.
  np.testing.assert_array_equal(process_logits(logits, SamplingParams(top_k=5)), logits)


@pytest.mark.parametrize("top_p, kept", [
    (1e-6, {2}), (0.45, {2}), (0.75, {2, 0}), (0.9, {2, 0, 3}), (1.0, {0, 1, 2, 3})])
def test_process_logits_top_p(top_p, kept):
  probs = np.array([0.3, 0.05, 0.5, 0.15])  # sorted: 2, 0, 3, 1
  logits = jnp.asarray(np.log(probs)[None], jnp.float32)
  out = np.asarray(process_logits(logits, SamplingParams(top_p=top_p)))
  assert _finite(out[0]) == kept
  assert_close(out[0, list(kept)], np.log(probs)[list(kept)])


def test_process_logits_top_p_after_top_k_renormalises():
  # top_k=2 leaves {0: 0.4, 1: 0.3} -> renormalised 4/7, 3/7; top_p=0.5 keeps only
  # token 0 (0.4 of the full distribution would not reach 0.5, so a top-p over
  # the untruncated distribution would keep both).
  logits = jnp.asarray(np.log([[0.4, 0.3, 0.2, 0.1]]), jnp.float32)
  out = process_logits(logits, SamplingParams(top_k=2, top_p=0.5))
  assert _finite(out[0]) == {0}


def test_choose_tokens_respects_mask_and_greedy():
  num = 4096
  logits = jnp.broadcast_to(jnp.array([0.0, -jnp.inf, 0.0, -jnp.inf, 1.0]), (num, 5))
  keys = row_keys(3, np.arange(num))
  toks = np.asarray(choose_tokens(logits, keys, jnp.int32(0), SamplingParams()))
  assert set(np.unique(toks)) == {0, 2, 4}
  greedy = np.asarray(choose_tokens(logits, keys, jnp.int32(0), SamplingParams(temperature=0)))
  np.testing.assert_array_equal(greedy, 4)
  # The step is folded into the key: another step draws differently.
  other = np.asarray(choose_tokens(logits, keys, jnp.int32(1), SamplingParams()))
  assert (other != toks).mean() > 0.3


# ----------------------------------------------------------------------------
# Stop rules
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stop_runs(core1, run):
  """Temperature-1 runs over two key sets (32 rows): without and with stopping
  at the step delimiter, and with min_new_tokens=4."""
  min4 = SamplingParams(temperature=1.0, max_new_tokens=N, min_new_tokens=4, stop_at_step=True)
  res = {}
  for name, sp in [("eos", SAMPLE), ("step", SAMPLE_STEP), ("min4", min4)]:
    outs = [run(core1, sp, keys=row_keys(seed, np.arange(B))) for seed in (20, 21)]
    res[name] = outs
  return res


def test_rows_stop_at_eos_only(stop_runs, special_ids):
  eos, step = special_ids.eos_ids[0], special_ids.step_ids[0]
  for out in stop_runs["eos"]:
    toks, _, lens, stopped = check_stop_rules(out, [eos])
  all_toks = np.concatenate([as_np(o)[0] for o in stop_runs["eos"]])
  all_lens = np.concatenate([as_np(o)[2] for o in stop_runs["eos"]])
  all_stopped = np.concatenate([as_np(o)[3] for o in stop_runs["eos"]])
  assert all_stopped.any() and not all_stopped.all(), "need rows that stop and rows that run out"
  # Without stop_at_step the step delimiter does not end a row.
  mid = [step in t[:n - 1] for t, n in zip(all_toks, all_lens)]
  assert any(mid), "step delimiter never sampled mid-row; the check would be vacuous"


def test_rows_stop_at_step_delimiter(stop_runs, special_ids):
  eos, step = special_ids.eos_ids[0], special_ids.step_ids[0]
  ends = []
  for out in stop_runs["step"]:
    toks, _, lens, stopped = check_stop_rules(out, [eos, step])
    ends += [t[n - 1] for t, n, s in zip(toks, lens, stopped) if s]
  assert step in ends, "no row stopped on the step delimiter"
  # More stop tokens, shorter rows than with EOS alone (same keys).
  lens_step = np.concatenate([as_np(o)[2] for o in stop_runs["step"]])
  lens_eos = np.concatenate([as_np(o)[2] for o in stop_runs["eos"]])
  assert lens_step.sum() < lens_eos.sum()


def test_a_step_ends_at_any_of_several_step_ids(policy_model, run, stop_runs, special_ids):
  """Real tokenizers end a step (a blank line) with many different tokens."""
  eos, step = special_ids.eos_ids[0], special_ids.step_ids[0]
  # A second delimiter: the token sampled most often mid-row (other than the stops).
  toks = np.concatenate([as_np(o)[0] for o in stop_runs["eos"]])
  counts = np.bincount(toks[:, :N // 2].ravel(), minlength=VOCAB)
  counts[[PAD_ID, eos, step]] = -1
  other = int(counts.argmax())
  core = SamplingCore(policy_model, SpecialIds(pad_id=PAD_ID, eos_ids=(eos,),
                                               step_ids=(step, other)))
  ends = []
  for seed in (20, 21):  # the keys of stop_runs
    out = run(core, SAMPLE_STEP, keys=row_keys(seed, np.arange(B)))
    t, _, lens, stopped = check_stop_rules(out, [eos, step, other])
    ends += [int(r[n - 1]) for r, n, st in zip(t, lens, stopped) if st]
  assert step in ends and other in ends, ends
  # The solution-level view splits steps the same way.
  assert step_ends([4, step, 5, other, 6, eos], (step, other), (eos,)) == [1, 3, 5]
  assert step_ends([4, other, 5], (step, other), (eos,)) == [1, 2]  # unfinished: last token


def test_a_step_ends_where_two_tokens_complete_the_delimiter(policy_model, run, stop_runs,
                                                             special_ids):
  """A delimiter split over two tokens ("\\n" then "\\n"): with a pair (before, after) a
  step ends at a token of ``after`` right after one of ``before`` sampled in the same call,
  and nowhere else; the rows' tokens up to there are the EOS-only run's (same keys)."""
  eos = special_ids.eos_ids[0]
  toks = np.concatenate([as_np(o)[0] for o in stop_runs["eos"]])
  lens = np.concatenate([as_np(o)[2] for o in stop_runs["eos"]])
  bigrams = collections.Counter(
      (int(r[i]), int(r[i + 1])) for r, n in zip(toks, lens) for i in range(n - 1)
      if eos not in (r[i], r[i + 1]))
  (a, b), _ = bigrams.most_common(1)[0]  # the most frequent adjacent pair
  pairs = (((a,), (b,)),)
  core = SamplingCore(policy_model, SpecialIds(pad_id=PAD_ID, eos_ids=(eos,), step_pairs=pairs))
  got = [as_np(run(core, SAMPLE_STEP, keys=row_keys(seed, np.arange(B)))) for seed in (20, 21)]
  g_toks = np.concatenate([o[0] for o in got])
  g_lens = np.concatenate([o[2] for o in got])
  g_stop = np.concatenate([o[3] for o in got])
  hits = 0
  for r in range(len(g_lens)):
    full = toks[r, :lens[r]].tolist()
    want = step_ends(full, (), (eos,), pairs)[0] + 1 if full else 0  # the first step's end
    assert g_lens[r] == want, (r, full, g_toks[r, :g_lens[r]])
    np.testing.assert_array_equal(g_toks[r, :g_lens[r]], full[:want])
    if want < lens[r] or (want and full[want - 1] == eos):
      assert g_stop[r]
    hits += int(want >= 2 and full[want - 2] == a and full[want - 1] == b)
  assert hits, "no row completed the split delimiter: the check would be vacuous"
  # The solution-level view: the pair ends a step only in that order and adjacent.
  assert step_ends([a, b, 5, b, a, 6, eos], (), (eos,), pairs) == [1, 6]
  assert step_ends([b, a], (), (eos,), pairs) == [1]  # unfinished: its last token


def test_min_new_tokens_prevents_early_stop(stop_runs, special_ids):
  stops = [special_ids.eos_ids[0], special_ids.step_ids[0]]
  lens_step = np.concatenate([as_np(o)[2] for o in stop_runs["step"]])
  assert (lens_step < 4).any(), "no early stop to prevent; the check would be vacuous"
  for out in stop_runs["min4"]:
    toks, _, lens, _ = check_stop_rules(out, stops)
    assert (lens >= 4).all(), lens
    assert not np.isin(toks[:, :4], stops).any()


def test_min_new_tokens_bans_stops_exactly_before_min(core1, run, prompts, full_logits,
                                                      special_ids):
  """Greedy with min_new_tokens=2 is the argmax with EOS and the step delimiter
  masked at steps 0 and 1 only (catches off-by-one errors in either direction)."""
  m = 2
  stops = [special_ids.eos_ids[0], special_ids.step_ids[0]]
  plain = as_np(run(core1, GREEDY_STEP))
  assert (plain[2] <= m).any(), "no greedy row stops within min_new_tokens; vacuous"
  sp = SamplingParams(temperature=0.0, max_new_tokens=N, min_new_tokens=m, stop_at_step=True)
  toks, _, lens, stopped = check_stop_rules(run(core1, sp), stops)
  ref = np.array(generated_logits(full_logits, prompts, toks, lens))
  ref[:, :m, stops] = -np.inf
  mask = gen_mask(lens)
  np.testing.assert_array_equal(toks[mask], ref.argmax(-1)[mask])
  assert (lens[stopped] > m).all()
  assert (lens[stopped] == m + 1).any(), "no row stops right after the ban; boundary untested"


def test_inactive_rows_generate_nothing(core1, run, prompts):
  keys = row_keys(22, np.arange(B))
  full = as_np(run(core1, SAMPLE, keys=keys))
  active = np.arange(B) % 3 != 0
  state = core1.prefill(*prompts, cache_size=CACHE_SIZE)
  out = core1.sample(state, keys, SAMPLE, active=active)
  toks, logp, lens, stopped = as_np(out)
  np.testing.assert_array_equal(lens[~active], 0)
  np.testing.assert_array_equal(toks[~active], PAD_ID)
  np.testing.assert_array_equal(logp[~active], 0.0)
  assert not stopped[~active].any()
  for a, b in zip((toks, lens, stopped), (full[0], full[2], full[3])):
    np.testing.assert_array_equal(a[active], b[active])
  # The skipped rows continue as if freshly prefilled (their holes are ignored).
  cont = as_np(core1.sample(out.state, keys, GREEDY))
  greedy = as_np(run(core1, GREEDY))
  np.testing.assert_array_equal(cont[0][~active], greedy[0][~active])


# ----------------------------------------------------------------------------
# Continuation and gather
# ----------------------------------------------------------------------------
def test_greedy_continuation_after_step_stop_equals_one_call(core1, run, special_ids):
  eos = special_ids.eos_ids[0]
  keys = row_keys(0, np.arange(B))
  one = as_np(run(core1, SamplingParams(temperature=0.0, max_new_tokens=2 * N)))
  first = run(core1, GREEDY_STEP)
  t1, _, l1, s1 = as_np(first)
  t2, lp2, l2, s2 = as_np(core1.sample(first.state, keys, GREEDY))
  compared = 0
  for r in range(B):
    ref_t, ref_n = one[0][r], one[2][r]
    np.testing.assert_array_equal(t1[r, :l1[r]], ref_t[:l1[r]], err_msg=f"row {r}")
    if s1[r] and t1[r, l1[r] - 1] == eos:
      assert ref_n == l1[r] and one[3][r]
      continue
    k = min(l2[r], ref_n - l1[r])
    np.testing.assert_array_equal(t2[r, :k], ref_t[l1[r]:l1[r] + k], err_msg=f"row {r}")
    if s2[r] and l1[r] + l2[r] <= 2 * N:
      assert ref_n == l1[r] + l2[r] and one[3][r]
    if l1[r] < N:
      compared += k
  assert compared >= 8, "no row stopped at the step delimiter and went on"


def test_gather_then_continue(core1, run):
  keys = row_keys(30, np.arange(B))
  first = run(core1, SAMPLE, keys=keys)  # state with holes where rows stopped
  rows = np.array([5, 5, 5, 0, 15, 3, 3, 9, 9, 9, 9, 1, 2, 2, 7, 0])
  copies = [core1.gather(first.state, np.arange(B)) for _ in range(2)]  # gather copies
  gathered = [core1.gather(first.state, rows) for _ in range(2)]
  assert gathered[0].num_rows == B
  ref = as_np(core1.sample(copies[0], keys, GREEDY))
  got = as_np(core1.sample(gathered[0], keys, GREEDY))
  assert_same_samples(got, ref, rows)
  # Duplicated rows with duplicated keys sample identically; the source rows differ.
  keys2 = row_keys(31, np.arange(B))
  ref = as_np(core1.sample(copies[1], keys2, SAMPLE))
  got = as_np(core1.sample(gathered[1], keys2[rows], SAMPLE))
  assert_same_samples(got, ref, rows)
  assert len({tuple(t) for t in got[0]}) > 4


def test_gather_to_more_rows(core1, prompts):
  """Tree expansion: 2 parents -> 3 + 2 children, then greedy children agree."""
  state = core1.prefill(*prompts, cache_size=CACHE_SIZE)
  child = core1.gather(state, [4, 4, 4, 11, 11])
  assert child.num_rows == 5 and child.logits.shape[0] == 5
  toks = np.asarray(core1.sample(child, row_keys(0, np.arange(5)), GREEDY).tokens)
  assert (toks[:3] == toks[0]).all() and (toks[3:] == toks[3]).all()
  assert (toks[0] != toks[3]).any()


def test_extend_equals_prefill_of_concatenation(core1, prompts):
  tokens, valid = prompts
  whole = core1.prefill(tokens, valid, cache_size=CACHE_SIZE)
  ref_logits = np.asarray(whole.logits)
  ref = as_np(core1.sample(whole, row_keys(0, np.arange(B)), GREEDY))
  part = core1.prefill(tokens[:, :5], valid[:, :5], cache_size=CACHE_SIZE)
  part = core1.extend(part, tokens[:, 5:], valid[:, 5:])
  assert_close(np.asarray(part.logits), ref_logits)
  got = as_np(core1.sample(part, row_keys(0, np.arange(B)), GREEDY))
  np.testing.assert_array_equal(got[0], ref[0])
  # A row with nothing valid in the chunk keeps its logits.
  state = core1.prefill(tokens, valid, cache_size=CACHE_SIZE)
  before = np.asarray(state.logits)
  chunk_valid = np.ones((B, 3), bool)
  chunk_valid[2] = False
  state = core1.extend(state, np.full((B, 3), 7), chunk_valid)
  after = np.asarray(state.logits)
  np.testing.assert_array_equal(after[2], before[2])
  assert np.abs(after[0] - before[0]).max() > 1e-3



def test_extend_outputs_equal_full_forward_at_every_token(core1, prompts, full_logits):
  tokens, valid = prompts
  chunk = np.random.RandomState(3).randint(1, VOCAB, (B, 6)).astype(np.int32)
  chunk_valid = np.ones((B, 6), bool)
  chunk_valid[1, 4:] = False  # a row whose chunk ends early (right padding)
  chunk_valid[2] = False  # a row that adds nothing
  state = core1.prefill(tokens, valid, cache_size=CACHE_SIZE)
  before = np.asarray(state.logits)
  state, every = core1.extend_outputs(state, chunk, chunk_valid)
  every = np.asarray(every)[:B]
  assert every.shape == (B, 6, VOCAB)
  ref = full_logits(np.concatenate([tokens, chunk], 1), np.concatenate([valid, chunk_valid], 1))
  ref = ref[:, PROMPT_LEN:]
  assert_close(every[chunk_valid], ref[chunk_valid])
  # The state's logits are those at each row's last valid token (or unchanged).
  last = np.asarray(state.logits)
  assert_close(last[0], ref[0, 5])
  assert_close(last[1], ref[1, 3])
  np.testing.assert_array_equal(last[2], before[2])


# ----------------------------------------------------------------------------
# Per-row randomness
# ----------------------------------------------------------------------------
def test_row_samples_do_not_depend_on_the_rest_of_the_batch(core1, run, prompts):
  keys = row_keys(4, np.arange(B))
  base = as_np(run(core1, SAMPLE, keys=keys))
  perm = np.random.RandomState(0).permutation(B)
  permuted = as_np(run(core1, SAMPLE, keys=keys[perm], rows=perm))
  assert_same_samples(permuted, base, perm)
  # Half the batch replaced by other prompts: the kept rows are unchanged.
  other_t, other_v = make_prompts(99)
  tokens, valid = prompts[0].copy(), prompts[1].copy()
  tokens[8:], valid[8:] = other_t[8:], other_v[8:]
  mixed = as_np(run(core1, SAMPLE, keys=keys, tokens=tokens, valid=valid))
  np.testing.assert_array_equal(mixed[0][:8], base[0][:8])
  assert (mixed[0][8:] != base[0][8:]).any()
  # A row alone.
  alone = as_np(run(core1, SAMPLE, keys=keys[3:4], rows=[3]))
  np.testing.assert_array_equal(alone[0][0], base[0][3])
  assert_close(alone[1][0], base[1][3])


def test_same_keys_same_samples_different_keys_different(core1, run, prompts):
  tokens = np.repeat(prompts[0][:1], B, 0)
  valid = np.repeat(prompts[1][:1], B, 0)
  keys = row_keys(5, 7, np.arange(B))  # (seed, problem id, sample id)
  a = as_np(run(core1, SAMPLE, keys=keys, tokens=tokens, valid=valid))
  b = as_np(run(core1, SAMPLE, keys=keys, tokens=tokens, valid=valid))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)  # bitwise, logprobs included
  # Same prompt, different sample ids -> different samples.
  assert len({tuple(t) for t in a[0]}) >= B - 2
  # A different problem id (same sample ids) changes the samples too.
  c = as_np(run(core1, SAMPLE, keys=row_keys(5, 8, np.arange(B)), tokens=tokens, valid=valid))
  assert (c[0] != a[0]).any(1).sum() >= B - 2


def test_row_keys():
  keys = row_keys(5, 7, np.arange(4))
  assert keys.shape == (4,) and jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
  expect = jax.random.fold_in(jax.random.fold_in(jax.random.key(5), 7), 2)
  np.testing.assert_array_equal(jax.random.key_data(keys[2]), jax.random.key_data(expect))
  # Scalars broadcast; every (seed, ids) combination gives a distinct key.
  same = row_keys(5, [7, 7, 7, 7], np.arange(4))
  np.testing.assert_array_equal(jax.random.key_data(keys), jax.random.key_data(same))
  variants = [row_keys(5, 7, np.arange(4)), row_keys(6, 7, np.arange(4)),
              row_keys(5, 8, np.arange(4))]
  data = np.concatenate([np.asarray(jax.random.key_data(k)) for k in variants])
  assert len({tuple(d) for d in data}) == 12


# ----------------------------------------------------------------------------
# Window plan (decode on a cache cut to what each segment can reach)
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def core_g8(policy_model, special_ids):
  """Windows of 8 slots: the 16-step decode runs in several segments."""
  return SamplingCore(policy_model, special_ids, window_granularity=8)


def test_window_granularity_does_not_change_samples(core1, core_g8, run):
  keys = row_keys(40, np.arange(B))
  outs = [run(c, SAMPLE_STEP, keys=keys) for c in (core1, core_g8)]
  conts = [c.sample(o.state, row_keys(41, np.arange(B)), SAMPLE)
           for c, o in zip((core1, core_g8), outs)]
  for a, b in [(outs[0], outs[1]), (conts[0], conts[1])]:
    assert_same_samples(as_np(b), as_np(a))


def test_chunks_longer_than_window_granularity(core1, core_g8):
  """Prefill and extend chunks longer than window_granularity (12 > 8)."""
  tokens, valid = make_prompts(7, num=4, length=12)
  ref = core1.prefill(tokens, valid, cache_size=CACHE_SIZE)
  state = core_g8.prefill(tokens, valid, cache_size=CACHE_SIZE)
  assert_close(np.asarray(state.logits), np.asarray(ref.logits))
  chunk = np.random.RandomState(8).randint(1, VOCAB, (4, 12))
  ref = core1.extend(ref, chunk)
  state = core_g8.extend(state, chunk)
  assert_close(np.asarray(state.logits), np.asarray(ref.logits))


# ----------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.5), r"temperature=-0\.5"),
    (dict(temperature=float("nan")), r"temperature=nan"),
    (dict(top_p=0.0), r"top_p=0\.0"),
    (dict(top_p=1.5), r"top_p=1\.5"),
    (dict(top_k=-1), r"top_k=-1"),
    (dict(max_new_tokens=0), r"max_new_tokens=0"),
    (dict(max_new_tokens=4, min_new_tokens=5), r"min_new_tokens=5\b.*max_new_tokens=4"),
    (dict(min_new_tokens=-1), r"min_new_tokens=-1"),
])
def test_sampling_params_reject_bad_values(kwargs, match):
  with pytest.raises(ValueError, match=match):
    SamplingParams(**kwargs)


def test_prefill_rejects_bad_prompts(core1):
  with pytest.raises(ValueError, match=r"prompts of length 12 .*do not fit cache_size=10"):
    core1.prefill(np.ones((2, 12), np.int32), cache_size=10)
  with pytest.raises(ValueError, match=r"a prompt of 65 tokens exceeds .*max_seq_len=64"):
    core1.prefill(np.ones((2, 65), np.int32), cache_size=80)
  with pytest.raises(ValueError, match=r"longest prompt \(60 tokens\) \+ max_new_tokens \(8\) = 68 "
                     r".*max_seq_len=64"):
    core1.generate(np.ones((1, 60), np.int32), None, row_keys(0, [0]),
                   SamplingParams(max_new_tokens=8))
  with pytest.raises(ValueError, match=r"\[0, 64\); got range \[1, 64\]"):
    core1.prefill(np.array([[1, 64]]), cache_size=8)
  with pytest.raises(ValueError, match=r"\[0, 64\); got range \[-1, 3\]"):
    core1.prefill(np.array([[-1, 3]]), cache_size=8)
  with pytest.raises(ValueError, match=r"shape \(4,\)"):
    core1.prefill(np.ones(4, np.int32), cache_size=8)
  with pytest.raises(ValueError, match=r"valid has shape \(2, 3\)"):
    core1.prefill(np.ones((2, 4), np.int32), np.ones((2, 3), bool), cache_size=8)


def test_bad_ids_and_settings(policy_model):
  with pytest.raises(ValueError, match=r"eos_ids holds 64, outside .*\[0, 64\)"):
    SamplingCore(policy_model, SpecialIds(eos_ids=(64,)))
  with pytest.raises(ValueError, match=r"step_ids holds 70"):
    SamplingCore(policy_model, SpecialIds(step_ids=(4, 70)))
  with pytest.raises(TypeError, match=r"step_ids=4: expected a tuple"):
    SpecialIds(step_ids=4)
  with pytest.raises(ValueError, match=r"pad_id=-1"):
    SamplingCore(policy_model, SpecialIds(pad_id=-1))
  with pytest.raises(ValueError, match=r"window_granularity=-1"):
    SamplingCore(policy_model, window_granularity=-1)


def test_sample_gather_extend_reject_bad_inputs(core1, run):
  out = run(core1, SAMPLE)  # 24 of 40 slots used
  state = out.state
  keys = row_keys(0, np.arange(B))
  with pytest.raises(ValueError, match=r"40 slots and 24 are used; 17 more do not fit"):
    core1.sample(state, keys, SamplingParams(max_new_tokens=17))
  with pytest.raises(ValueError, match=r"40 slots and 24 are used; 17 more do not fit"):
    core1.extend(state, np.ones((B, 17), np.int32))
  with pytest.raises(ValueError, match=r"extend got 3 rows for a state of 16 rows"):
    core1.extend(state, np.ones((3, 2), np.int32))
  with pytest.raises(ValueError, match=r"keys must be .*shape \(16,\).*\(15,\)"):
    core1.sample(state, row_keys(0, np.arange(B - 1)), SAMPLE)
  raw = jax.random.split(jax.random.PRNGKey(0), B)  # legacy uint32 (16, 2) keys
  with pytest.raises(ValueError, match=r"keys must be typed PRNG keys .*uint32\(16, 2\)"):
    core1.sample(state, raw, SAMPLE)
  with pytest.raises(ValueError, match=r"active has shape \(3,\)"):
    core1.sample(state, keys, SAMPLE, active=np.ones(3, bool))
  with pytest.raises(ValueError, match=r"limits must be \(16,\) integers in \[0, max_new_tokens=16\]"
                     r".*\[2, 17\]"):
    core1.sample(state, keys, SAMPLE, limits=np.arange(B) + 2)
  with pytest.raises(TypeError, match="SamplingParams"):
    core1.sample(state, keys, {"temperature": 1.0})
  for rows, match in [([16], r"\[0, 16\); got \[16, 16\]"), ([0, -1], r"\[0, 16\); got \[-1, 0\]"),
                      ([], "non-empty"), ([[0, 1]], r"1-D .*\(1, 2\)")]:
    with pytest.raises(ValueError, match=match):
      core1.gather(state, rows)
  # Rejected calls did not consume (donate) the state: it still continues.
  cont = as_np(core1.sample(state, keys, GREEDY))
  assert (cont[2] >= 1).all()


# ----------------------------------------------------------------------------
# Per-row token caps and the context: a row's stop never depends on the others
# ----------------------------------------------------------------------------
def test_per_row_limits_cut_each_row_where_its_own_limit_says(core1, run, prompts):
  full = as_np(run(core1, GREEDY))
  limits = np.array([0, 1, 2, 3, 5, 8, 13, 16] * 2)
  tokens, valid = prompts
  state = core1.prefill(tokens, valid, cache_size=CACHE_SIZE)
  out = core1.sample(state, row_keys(0, np.arange(B)), GREEDY, limits=limits)
  toks, logp, lens, stopped = as_np(out)
  np.testing.assert_array_equal(lens, np.minimum(full[2], limits))
  for r in range(B):
    np.testing.assert_array_equal(toks[r, :lens[r]], full[0][r, :lens[r]])
    np.testing.assert_array_equal(toks[r, lens[r]:], PAD_ID)
    # A row cut by its limit did not stop; one that stopped first still did.
    assert stopped[r] == (full[3][r] and full[2][r] <= limits[r])
  # Continuing a cut row gives the rest of its unlimited sample.
  cont = as_np(core1.sample(out.state, row_keys(0, np.arange(B)),
                            SamplingParams(temperature=0.0, max_new_tokens=N)))
  r = 6  # limit 13
  if not stopped[r]:
    rest = full[2][r] - lens[r]
    np.testing.assert_array_equal(cont[0][r, :rest], full[0][r, lens[r]:full[2][r]])


def test_rows_stop_at_the_context_whatever_the_cache_size(core1, prompts):
  """A prompt near the context and short ones share a cache larger than the context:
  the long row stops at max_seq_len (not stopped), the others are unaffected."""
  ctx = core1.config.max_seq_len  # 64
  tokens, valid = prompts
  rs = np.random.RandomState(5)
  long_prompt = rs.randint(1, VOCAB, ctx - 3).astype(np.int32)
  width = ctx - 3
  rows = np.full((3, width), PAD_ID, np.int32)
  mask = np.zeros((3, width), bool)
  rows[0] = long_prompt
  mask[0] = True
  for i, r in enumerate((1, 2), start=1):
    n = int(valid[r].sum())
    rows[i, width - n:] = tokens[r, valid[r]]
    mask[i, width - n:] = True
  keys = row_keys(0, np.arange(3))
  state = core1.prefill(rows, mask, cache_size=width + N)  # 77 slots > the context of 64
  toks, _, lens, stopped = as_np(core1.sample(state, keys, GREEDY))
  assert lens[0] <= 3
  if not stopped[0]:
    assert lens[0] == 3  # cut by the context: 61 + 3 = 64 tokens
  alone = as_np(core1.generate(tokens[1:3], valid[1:3], keys[1:], GREEDY))
  for i in (1, 2):
    np.testing.assert_array_equal(toks[i, :lens[i]], alone[0][i - 1, :alone[2][i - 1]])
    assert lens[i] == alone[2][i - 1] and stopped[i] == alone[3][i - 1]
