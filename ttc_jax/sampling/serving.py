"""Continuous batching on the sampling core: a fixed number of slots serves a queue of
requests, and a finished row's slot takes the next request, so finished rows stop costing
decode steps.

A static batch runs until its longest row ends: with answers of 10 to 96 tokens, about half
of its row-steps are spent on rows that have already finished. Here (as JetStream's
insert / generate, on the one decode loop of :class:`~ttc_jax.sampling.core.SamplingCore`):

* the queue is taken shortest prompt first; the first ``slots`` requests are prefilled
  into a cache of ``W + max_new_tokens + 2 x segment`` slots (W: the longest prompt,
  rounded up);
* decoding runs in segments of at most ``segment`` steps (``SamplingCore.sample(...,
  steps=segment)``, one ``lax.while_loop`` in jit, leaving as soon as every row is done);
* after each segment, the requests that ended are collected, and the next ones are
  prefilled together and inserted into the freed slots (``CachedModel.insert``: their
  keys and values at the slots just before the write index, every other slot of theirs
  masked, their next-token logits);
* all rows share one write index, and a live row reads only the slots since its prompt
  was written (its width plus its tokens so far: its extent), so when a segment would not
  fit, the cache is shifted left to the longest live extent (``CachedModel.shift``; right,
  when a new prompt is wider than the index), and also once ``SHIFT_SLACK`` slots before
  it are read by no one: a call reads only the slots up to its last step (``window_plan``),
  so every step costs about the longest live row.

Exactness: request r draws its j-th token from ``fold_in(keys[r], j)`` whatever its slot,
segment or neighbours (``start`` / ``prev`` carry a request across segments), its prompt
is encoded alone (padding masked), and keys carry their RoPE rotation, so moving slots
changes nothing the model computes: a request gives the tokens of a static batch (the
log-probabilities to float32 rounding: attention sums over a differently laid out cache).

Utilization: every decode step of a call costs every slot; ``row_steps`` counts them and
``alive_steps`` (= the tokens generated) the ones that made a token.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax.progress import Progress
from ttc_jax.sampling import confidence as confidence_lib
from ttc_jax.sampling.cached import left_pad
from ttc_jax.sampling.cached import round_up
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling.core import SamplingParams


@dataclasses.dataclass
class Served:
  """The requests' outputs in request order (host numpy; as a static ``sample`` call's),
  and what the decode cost."""

  tokens: np.ndarray  # (N, max_new_tokens) int32, pad after each row's length
  logprobs: np.ndarray  # (N, max_new_tokens) float32
  confidence: np.ndarray  # (N, max_new_tokens, len(confidence.STATS)) float32
  lengths: np.ndarray  # (N,) int32
  stopped: np.ndarray  # (N,) bool
  row_steps: int  # decode steps x slots, over every call
  calls: int  # sampling calls (segments)

  @property
  def alive_steps(self) -> int:
    return int(self.lengths.sum())

  @property
  def utilization(self) -> float:
    """Alive row-steps over row-steps (1.0 when nothing was decoded)."""
    return self.alive_steps / self.row_steps if self.row_steps else 1.0

  def token_stats(self) -> np.ndarray:
    """(N, max_new_tokens, 1 + len(confidence.STATS)): each token's log-probability and
    confidence (as ``SampleOutput.token_stats``)."""
    return np.concatenate([self.logprobs[..., None], self.confidence], axis=-1)


# Slots no live row reads are reclaimed once there are this many (the window granularity).
SHIFT_SLACK = 32


def _bucket(n: int, cap: int) -> int:
  """A power of two >= max(n, 8) (at most ``cap``, the slots): few compiled prefill and
  insert shapes."""
  return min(cap, max(8, 1 << max(n - 1, 0).bit_length()))


def serve(core: SamplingCore, prompts: Sequence[Sequence[int]], keys: jax.Array,
          sp: SamplingParams, *, slots: int, segment: int = 8, limits=None,
          pad_multiple: int = 16, desc: str = "sampling",
          log_fn: Callable[[str], None] | None = None) -> Served:
  """Samples one continuation per prompt with continuous batching.

  Args:
    core: the sampling core.
    prompts: N token lists (BOS included), each within the model context.
    keys: (N,) typed PRNG keys, request r's ``keys[r]`` (see ``row_keys``).
    sp: sampling parameters (at most ``max_new_tokens`` per request, never past the
      model context).
    slots: rows decoded together (the batch; at most N are used).
    segment: decode steps per call between refills (smaller: fewer idle row-steps, more
      calls).
    limits: optional (N,) per-request token caps in [0, max_new_tokens].
    pad_multiple: the prompt width W is the longest prompt rounded up to this.
  """
  n = len(prompts)
  if n == 0:
    raise ValueError("no prompts to sample from.")
  if slots < 1 or segment < 1:
    raise ValueError(f"slots={slots} and segment={segment} must be >= 1.")
  keys = jnp.asarray(keys)
  if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) or keys.shape != (n,):
    raise ValueError(f"keys must be ({n},) typed PRNG keys; got {keys.dtype}{tuple(keys.shape)}.")
  max_new = sp.max_new_tokens
  lim = np.full((n,), max_new, np.int32) if limits is None else np.asarray(limits, np.int32)
  if lim.shape != (n,) or lim.min() < 0 or lim.max() > max_new:
    raise ValueError(f"limits must be ({n},) integers in [0, max_new_tokens={max_new}].")
  segment = min(segment, max_new)
  slots = min(slots, n)
  # Shortest prompts first: a batch of new prompts is as wide as its longest.
  order = np.argsort([len(p) for p in prompts], kind="stable")
  width_of = lambda rs: round_up(max(len(prompts[r]) for r in rs), pad_multiple)  # noqa: E731
  # The most a live row can read, and room for two segments before a shift (a shift copies
  # the cache once; a larger cache costs every step: two segments balance them).
  size = width_of(order) + max_new + 2 * segment
  pad_id = core.ids.pad_id

  tokens = np.full((n, max_new), pad_id, np.int32)
  logprobs = np.zeros((n, max_new), np.float32)
  confidence = np.zeros((n, max_new, len(confidence_lib.STATS)), np.float32)
  lengths = np.zeros((n,), np.int32)
  stopped = np.zeros((n,), bool)

  first = order[:slots]
  width = width_of(first)
  tok, valid = left_pad([prompts[r] for r in first], width, pad_id)
  state = core.prefill(tok, valid, cache_size=size)
  index = width  # the shared write index (host copy)
  req = first.astype(np.int64)  # the request in each slot (-1: none)
  start = np.zeros((slots,), np.int32)  # its tokens so far
  prev = np.full((slots,), -1, np.int32)  # its last token
  extent = np.full((slots,), width, np.int64)  # the slots before the index it reads
  queued, row_steps, calls = slots, 0, 0
  kwargs = {} if log_fn is None else {"log_fn": log_fn}
  progress = Progress(n, desc, unit="rows", **kwargs)

  def move_to(target: int):
    """Shifts the cache so that the write index is ``target`` (>= every live extent)."""
    nonlocal state, index
    if target != index:
      state = core.shift(state, index - target)
      index = target

  while (req >= 0).any():
    live = req >= 0
    need = int(extent[live].max())
    # Reclaim what no live row reads: a call reads the slots up to its last step, so a
    # smaller index is a cheaper step (a shift copies the cache once).
    if index + segment > size or index - need >= SHIFT_SLACK:
      move_to(need)
    safe = np.where(live, req, 0)
    out = core.sample(state, keys[jnp.asarray(safe)], sp, active=live,
                      limits=np.where(live, lim[safe] - start, 0), steps=segment,
                      start=start, prev=prev)
    state = out.state
    ran = int(out.steps)
    index += ran
    row_steps += ran * slots
    calls += 1
    got, lp, conf = np.asarray(out.tokens), np.asarray(out.logprobs), np.asarray(out.confidence)
    made, stop, done = np.asarray(out.lengths), np.asarray(out.stopped), np.asarray(out.done)
    for i in np.flatnonzero(live & (made > 0)):
      r, a, k = req[i], start[i], made[i]
      tokens[r, a:a + k], logprobs[r, a:a + k], confidence[r, a:a + k] = (
          got[i, :k], lp[i, :k], conf[i, :k])
      prev[i] = got[i, k - 1]
    start += np.where(live, made, 0).astype(np.int32)
    extent += ran  # every row's slots end at the index
    ended = np.flatnonzero(live & done)
    for i in ended:
      lengths[req[i]], stopped[req[i]] = start[i], stop[i]
    progress.update(len(ended))
    req[ended] = -1
    take = min(len(ended), n - queued)
    if take:
      new = order[queued:queued + take]
      queued += take
      rows = ended[:take]
      width = width_of(new)
      # The new prompts go just before the index (moved right if they do not fit there).
      if width > index:
        move_to(width)
      count = _bucket(take, slots)
      tok, valid = left_pad([prompts[r] for r in new] + [prompts[new[0]]] * (count - take),
                            width, pad_id)
      fresh = core.prefill(tok, valid, cache_size=width)
      state = core.insert(state, fresh, np.concatenate([rows, np.full(count - take, -1)]))
      req[rows], start[rows], prev[rows], extent[rows] = new, 0, -1, width
  return Served(tokens=tokens, logprobs=logprobs, confidence=confidence, lengths=lengths,
                stopped=stopped, row_steps=row_steps, calls=calls)
