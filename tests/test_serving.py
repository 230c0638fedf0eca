"""Continuous batching (ttc_jax.sampling.serving): a request gives the tokens of a static
batch, whatever slot or segment it ran in, at every edge (varied lengths, EOS at the first
step, rows that reach the context, a queue shorter or longer than the slots), on 1 and 8
devices; and finished rows stop costing decode steps."""

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
