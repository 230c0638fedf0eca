"""Continuous batching (ttc_jax.sampling.serving) and shrinking calls (``sample(...,
shrink=)``): a request gives the tokens of a static batch, whatever slot, segment or batch
it ran in, at every edge (varied lengths, EOS at the first step, rows that reach the
context, inactive rows, a queue shorter or longer than the slots), on 1 and 8 devices;
and finished rows stop costing decode steps."""

import jax
import numpy as np
import pytest

from conftest import NEW_TOKENS
from conftest import SAMPLE
from conftest import SAMPLE_STEP
from conftest import TOP_P
from conftest import VOCAB
from conftest import assert_close
from ttc_jax.parallel import make_mesh
from ttc_jax.sampling import serving
from ttc_jax.sampling import solutions
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling.core import SpecialIds
from ttc_jax.sampling.core import row_keys
from ttc_jax.sampling.core import shrink_sizes

CONTEXT = 64  # the test policy's max_seq_len


def _prompts(seed: int, num: int, long_every: int = 0) -> list[list[int]]:
  """``num`` prompts (BOS-less random tokens) of 2..12 tokens; every ``long_every``-th one
  (if > 0) leaves fewer than NEW_TOKENS positions of the context, so it stops there."""
  rs = np.random.RandomState(seed)
  out = []
  for i in range(num):
    n = CONTEXT - 5 if long_every and i % long_every == long_every - 1 else rs.randint(2, 13)
    out.append(rs.randint(1, VOCAB, n).tolist())
  return out


def _static(core, prompts, keys, sp, limits, width=64):
  """The reference: all prompts in one static batch (prefill + one sample call)."""
  tokens, valid = solutions.left_pad(prompts, width, core.ids.pad_id)
  state = core.prefill(tokens, valid, cache_size=width + sp.max_new_tokens)
  out = core.sample(state, keys, sp, limits=limits)
  return {"tokens": np.asarray(out.tokens), "logprobs": np.asarray(out.logprobs),
          "confidence": np.asarray(out.confidence), "lengths": np.asarray(out.lengths),
          "stopped": np.asarray(out.stopped)}


def _assert_same(served, ref):
  np.testing.assert_array_equal(served.lengths, ref["lengths"])
  np.testing.assert_array_equal(served.stopped, ref["stopped"])
  np.testing.assert_array_equal(served.tokens, ref["tokens"])
  assert_close(served.logprobs, ref["logprobs"])
  assert_close(served.confidence, ref["confidence"])


@pytest.fixture(scope="module")
def core8(policy_model, special_ids):
  return SamplingCore(policy_model, special_ids, mesh=make_mesh())


@pytest.mark.parametrize("num, slots, segment", [(24, 8, 3), (5, 8, 4), (24, 12, 5)],
                         ids=["queue-longer", "queue-shorter", "slots-not-dividing"])
@pytest.mark.parametrize("devices", ["1", "8"])
def test_continuous_batching_gives_the_static_batch_s_tokens(core1, core8, num, slots,
                                                             segment, devices):
  core = {"1": core1, "8": core8}[devices]
  prompts = _prompts(num, num, long_every=4)
  keys = row_keys(11, np.arange(num))
  limits = np.random.RandomState(num).randint(0, NEW_TOKENS + 1, num)
  limits[0] = NEW_TOKENS
  limits[3::4] = NEW_TOKENS  # the long prompts may reach the context
  ref = _static(core1, prompts, keys, SAMPLE, limits)
  served = serving.serve(core, prompts, keys, SAMPLE, slots=slots, segment=segment,
                         limits=limits)
  _assert_same(served, ref)
  # The edges were there: varied lengths, rows stopped by EOS and rows at the context.
  assert len(set(ref["lengths"].tolist())) >= 4 and ref["stopped"].any()
  at_context = [i for i, p in enumerate(prompts) if len(p) + ref["lengths"][i] == CONTEXT]
  assert at_context and not ref["stopped"][at_context].any()
  assert served.alive_steps == int(ref["lengths"].sum())


def test_the_cache_is_shifted_both_ways_and_stays_exact(core1, monkeypatch):
  """A long queue on few slots: slots no live row reads are reclaimed (a left shift), and a
  longer prompt gets room before the index (a right shift); the tokens stay the static
  batch's."""
  from ttc_jax.sampling.cached import CachedModel
  shifts, shift = [], CachedModel.shift
  monkeypatch.setattr(CachedModel, "shift",
                      lambda self, state, s: shifts.append(s) or shift(self, state, s))
  prompts = _prompts(40, 40, long_every=4)
  keys = row_keys(11, np.arange(40))
  limits = np.random.RandomState(40).randint(0, NEW_TOKENS + 1, 40)
  limits[3::4] = NEW_TOKENS
  ref = _static(core1, prompts, keys, SAMPLE, limits)
  served = serving.serve(core1, prompts, keys, SAMPLE, slots=4, segment=2, limits=limits)
  _assert_same(served, ref)
  assert min(shifts) < 0 < max(shifts)


@pytest.mark.parametrize("sp", [SAMPLE_STEP, TOP_P], ids=["stop-at-step", "top_p"])
def test_a_request_cut_into_segments_draws_what_it_would_in_one_call(core1, sp):
  """One-step segments: every token is drawn in a call of its own (its key's fold-in and
  min_new_tokens from ``start``, a split delimiter from ``prev``)."""
  prompts = _prompts(3, 10)
  keys = row_keys(5, np.arange(10))
  ref = _static(core1, prompts, keys, sp, None)
  served = serving.serve(core1, prompts, keys, sp, slots=4, segment=1)
  _assert_same(served, ref)


def test_eos_at_the_first_step(policy_model, special_ids, core1):
  """A request whose first token is EOS ends at once and frees its slot for the next."""
  prompts = _prompts(4, 12)
  keys = row_keys(3, np.arange(12))
  first = _static(core1, prompts, keys, SAMPLE, None)["tokens"][:, 0]
  eos = tuple(sorted({int(first[0]), int(first[5])} - {special_ids.pad_id}))
  core = SamplingCore(policy_model, SpecialIds(pad_id=special_ids.pad_id, eos_ids=eos,
                                               step_ids=special_ids.step_ids))
  ref = _static(core, prompts, keys, SAMPLE, None)
  assert ref["lengths"][0] == 1 and ref["stopped"][0]
  served = serving.serve(core, prompts, keys, SAMPLE, slots=3, segment=2)
  _assert_same(served, ref)


def test_finished_rows_stop_costing_decode_steps(core1):
  """Against static batches of the same rows: fewer row-steps for the same tokens, and
  generate's two paths agree row for row (with their utilization measured)."""
  num, slots = 48, 8
  prompts = _prompts(8, num)
  ids = np.stack([np.zeros(num, np.int64), np.arange(num)], 1)
  limits_free = SAMPLE  # lengths vary by EOS alone
  static = solutions.generate(core1, prompts, ids, 7, limits_free, batch_size=slots)
  cont = solutions.generate(core1, prompts, ids, 7, limits_free, batch_size=slots, segment=4)
  np.testing.assert_array_equal(cont.tokens, static.tokens)
  np.testing.assert_array_equal(cont.lengths, static.lengths)
  np.testing.assert_array_equal(cont.stopped, static.stopped)
  assert len(set(static.lengths.tolist())) >= 4  # lengths vary
  assert cont.row_steps < static.row_steps
  assert cont.utilization > static.utilization
  # Once the queue drains, slots with no request left are idle (not ended) row-steps.
  assert 0 < cont.idle_steps <= cont.row_steps - int(cont.lengths.sum())
  assert 0 < static.utilization <= 1 and cont.utilization <= 1


def test_bad_requests_are_named(core1):
  keys = row_keys(0, np.arange(2))
  with pytest.raises(ValueError, match="no prompts"):
    serving.serve(core1, [], keys[:0], SAMPLE, slots=2)
  with pytest.raises(ValueError, match=r"slots=0 and segment=4 must be >= 1"):
    serving.serve(core1, [[1, 2], [3]], keys, SAMPLE, slots=0, segment=4)
  with pytest.raises(ValueError, match=r"keys must be \(2,\) typed PRNG keys"):
    serving.serve(core1, [[1, 2], [3]], jax.random.key(0), SAMPLE, slots=2)
  with pytest.raises(ValueError, match=r"limits must be \(2,\) integers in \[0, "):
    serving.serve(core1, [[1, 2], [3]], keys, SAMPLE, slots=2, limits=[1, NEW_TOKENS + 1])


class _Chained:
  """A queue of ``chains`` chains of ``length`` requests: request l of a chain is ready
  once request l - 1 ended, its prompt the chain's first prompt + the last 3 tokens of
  l - 1's output (dependent requests, as revision chains'). ``stall``: request ids it never
  makes ready (a broken queue)."""

  def __init__(self, prompts, length, seed, max_new, stall=()):
    self.first, self.length, self.stall = prompts, length, set(stall)
    self.total = len(prompts) * length
    self.max_prompt = max(len(p) for p in prompts) + 3
    keys = row_keys(seed, np.repeat(np.arange(len(prompts)), length),
                    np.tile(np.arange(length), len(prompts)))
    self.key_impl = jax.random.key_impl(keys)
    self.key_data = np.asarray(jax.random.key_data(keys))
    self.max_new = max_new
    self.ready_ids = [c * length for c in range(len(prompts))]
    self.prompts = {r: list(p) for r, p in zip(self.ready_ids, prompts)}
    self.out = {}

  def ready(self):
    return len(self.ready_ids)

  def take(self, k):
    ids, self.ready_ids = self.ready_ids[:k], self.ready_ids[k:]
    return serving.Requests(ids=ids, prompts=[self.prompts[r] for r in ids],
                            key_data=self.key_data[ids],
                            limits=np.full((k,), self.max_new, np.int32))

  def finish(self, rid, tokens, logprobs, confidence, stopped):
    self.out[rid] = (tokens.tolist(), logprobs, stopped)
    c, step = divmod(rid, self.length)
    if step + 1 < self.length and rid + 1 not in self.stall:
      self.prompts[rid + 1] = self.first[c] + tokens.tolist()[-3:]
      self.ready_ids.append(rid + 1)


@pytest.mark.parametrize("slots", [2, 5], ids=["fewer-slots-than-chains", "more"])
def test_a_queue_that_grows_as_requests_end_gives_the_static_tokens(core1, slots):
  """Dependent requests (each chain's next prompt made from its last output) share the
  slots: each gives the tokens a static batch gives its prompt with its key; slots with
  nothing ready are idle row-steps."""
  prompts = _prompts(6, 4)
  queue = _Chained(prompts, length=3, seed=9, max_new=NEW_TOKENS)
  used = serving.serve_queue(core1, queue, SAMPLE, slots=slots, segment=3)
  assert sorted(queue.out) == list(range(12))
  keys = jax.random.wrap_key_data(queue.key_data, impl=queue.key_impl)
  ref = _static(core1, [queue.prompts[r] for r in range(12)], keys, SAMPLE, None)
  for r in range(12):
    tokens, logprobs, stopped = queue.out[r]
    n = int(ref["lengths"][r])
    assert tokens == ref["tokens"][r, :n].tolist(), r
    assert stopped == bool(ref["stopped"][r])
    assert_close(logprobs, ref["logprobs"][r, :n])
  assert used.alive_steps == int(ref["lengths"].sum())
  assert used.alive_steps + used.idle_steps <= used.row_steps
  if slots == 5:  # 4 chains: a slot never has a request
    assert used.idle_steps > 0


def test_a_queue_that_stalls_or_hands_out_bad_requests_is_named(core1):
  prompts = _prompts(7, 2)
  with pytest.raises(RuntimeError, match=r"sampling: 1 requests are still to come but none "
                                         r"is ready and none is running"):
    serving.serve_queue(core1, _Chained(prompts, 2, 0, NEW_TOKENS, stall={3}), SAMPLE,
                        slots=2, segment=4)
  with pytest.raises(ValueError, match=r"request limits \[\d+, \d+\]: expected 2 integers "
                                       rf"in \[0, max_new_tokens={NEW_TOKENS}\]"):
    serving.serve_queue(core1, _Chained(prompts, 2, 0, NEW_TOKENS + 1), SAMPLE, slots=2)
  queue = _Chained(prompts, 2, 0, NEW_TOKENS)
  queue.max_prompt = 1
  with pytest.raises(ValueError, match=r"a request's prompt has \d+ tokens; the queue's "
                                       r"max_prompt is 1"):
    serving.serve_queue(core1, queue, SAMPLE, slots=2)
  queue = _Chained(prompts, 2, 0, NEW_TOKENS)
  queue.prompts[0] = []
  with pytest.raises(ValueError, match=r"request 0: an empty prompt"):
    serving.serve_queue(core1, queue, SAMPLE, slots=2)
  queue = _Chained(prompts, 2, 0, NEW_TOKENS)
  queue.total = 3  # it hands out 4
  with pytest.raises(RuntimeError, match=r"\(4 of its total 3 in all\)"):
    serving.serve_queue(core1, queue, SAMPLE, slots=2, segment=4)


def _one_call(core, prompts, keys, sp, *, width=64, **kwargs):
  tokens, valid = solutions.left_pad(prompts, width, core.ids.pad_id)
  state = core.prefill(tokens, valid, cache_size=width + sp.max_new_tokens)
  return core.sample(state, keys, sp, **kwargs)


def _assert_same_call(out, ref):
  for name in ("tokens", "lengths", "stopped", "done"):
    np.testing.assert_array_equal(np.asarray(getattr(out, name)),
                                  np.asarray(getattr(ref, name)), err_msg=name)
  assert_close(out.logprobs, ref.logprobs)
  assert_close(out.confidence, ref.confidence)


@pytest.mark.parametrize("sp", [SAMPLE, SAMPLE_STEP], ids=["to-eos", "stop-at-step"])
@pytest.mark.parametrize("devices", ["1", "8"])
def test_a_shrinking_call_gives_one_call_s_tokens(core1, core8, devices, sp):
  """The live rows gathered into ever smaller batches as rows finish: the tokens, lengths,
  stopped and done of one call (log-probabilities to float32 rounding), with varied limits,
  inactive rows and rows that reach the context; the same steps, fewer row-steps. Over 8
  devices the call does not shrink (one call, its row-steps)."""
  core = {"1": core1, "8": core8}[devices]
  num = 40
  prompts = _prompts(num, num, long_every=4)
  keys = row_keys(13, np.arange(num))
  limits = np.random.RandomState(num).randint(0, NEW_TOKENS + 1, num)
  limits[3::4] = NEW_TOKENS  # the long prompts may reach the context
  active = np.ones(num, bool)
  active[[5, 18]] = False
  kwargs = dict(active=active, limits=limits)
  ref = _one_call(core1, prompts, keys, sp, **kwargs)
  out = _one_call(core, prompts, keys, sp, shrink=2, **kwargs)
  _assert_same_call(out, ref)
  assert out.state is None
  lengths = np.asarray(ref.lengths)
  assert len(set(lengths.tolist())) >= 4 and np.asarray(ref.stopped).any()
  assert not lengths[[5, 18]].any()
  at_context = [i for i, p in enumerate(prompts) if len(p) + lengths[i] == CONTEXT]
  assert at_context and not np.asarray(ref.stopped)[at_context].any()
  assert int(out.steps) == int(ref.steps)
  if devices == "1":
    assert int(lengths.sum()) <= int(out.row_steps) < int(ref.row_steps)
  else:
    assert int(out.row_steps) == int(ref.row_steps)


def test_a_shrinking_call_continues_rows_from_an_earlier_call(core1):
  """Rows continued from an earlier call (``start``: tokens drawn before, ``prev``: the last
  one, a split step delimiter's first half): the tokens of one call; a shrinking call runs
  its rows to their ends, so ``steps`` is refused with it."""
  num = 24
  prompts = _prompts(6, num)
  keys = row_keys(21, np.arange(num))
  start = np.random.RandomState(2).randint(0, 4, num)
  prev = np.where(start > 0, 7, -1)
  ref = _one_call(core1, prompts, keys, SAMPLE_STEP, start=start, prev=prev)
  out = _one_call(core1, prompts, keys, SAMPLE_STEP, start=start, prev=prev, shrink=2)
  _assert_same_call(out, ref)
  assert int(out.row_steps) < int(ref.row_steps)
  with pytest.raises(ValueError, match="shrink=2 with steps=3"):
    _one_call(core1, prompts, keys, SAMPLE_STEP, steps=3, shrink=2)


def test_eos_at_the_first_step_in_a_shrinking_call(policy_model, special_ids):
  """Rows whose first token is EOS end at once; the rest go on in a smaller batch."""
  prompts = _prompts(4, 16)
  keys = row_keys(3, np.arange(16))
  base = SamplingCore(policy_model, special_ids)
  first = np.asarray(_one_call(base, prompts, keys, SAMPLE).tokens)[:, 0]
  eos = tuple(sorted({int(first[0]), int(first[5])} - {special_ids.pad_id}))
  core = SamplingCore(policy_model, SpecialIds(pad_id=special_ids.pad_id, eos_ids=eos,
                                               step_ids=special_ids.step_ids))
  ref = _one_call(core, prompts, keys, SAMPLE)
  assert np.asarray(ref.lengths)[0] == 1 and np.asarray(ref.stopped)[0]
  out = _one_call(core, prompts, keys, SAMPLE, shrink=2)
  _assert_same_call(out, ref)
  assert int(out.row_steps) < int(ref.row_steps)


def test_generate_shrinks_its_batches(core1, monkeypatch):
  """The stages' sampling (``solutions.generate``'s static batches) shrinks: against
  batches that do not, the same tokens row for row, fewer row-steps."""
  num = 96
  prompts = _prompts(9, num)
  ids = np.stack([np.zeros(num, np.int64), np.arange(num)], 1)
  shrunk = solutions.generate(core1, prompts, ids, 7, SAMPLE, batch_size=64)
  monkeypatch.setattr(solutions, "SHRINK_ROWS", 0)
  whole = solutions.generate(core1, prompts, ids, 7, SAMPLE, batch_size=64)
  np.testing.assert_array_equal(shrunk.tokens, whole.tokens)
  np.testing.assert_array_equal(shrunk.lengths, whole.lengths)
  np.testing.assert_array_equal(shrunk.stopped, whole.stopped)
  assert shrunk.row_steps < whole.row_steps and shrunk.utilization > whole.utilization


@pytest.mark.parametrize("rows, data, floor", [(512, 1, 32), (40, 8, 2), (64, 1, 32), (7, 1, 1),
                                               (8, 8, 1)])
def test_shrink_sizes(rows, data, floor):
  sizes = shrink_sizes(rows, data, floor)
  assert sizes == sorted(set(sizes))
  assert all(floor <= s < rows and s % data == 0 for s in sizes)
  if (rows, data, floor) == (512, 1, 32):
    assert sizes == [32, 64, 128, 192, 256, 320, 384, 448]  # eighths to a quarter, halvings
  if rows <= data:
    assert sizes == []  # nothing below one row per device


def test_bad_shrink_and_gather_sizes_are_named(core1):
  prompts = _prompts(1, 4)
  keys = row_keys(0, np.arange(4))
  for bad in (-1, True, 2.5):
    with pytest.raises(ValueError, match="shrink="):
      _one_call(core1, prompts, keys, SAMPLE, shrink=bad)
  tokens, valid = solutions.left_pad(prompts, 16, core1.ids.pad_id)
  state = core1.prefill(tokens, valid, cache_size=32)
  with pytest.raises(ValueError, match="size=8"):
    core1.gather(state, np.arange(4), size=8)
  grown = core1.gather(state, np.arange(4), size=48)
  assert grown.cache.size == 48 and int(grown.cache.index) == 16
