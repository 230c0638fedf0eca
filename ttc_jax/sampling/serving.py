"""Continuous batching on the sampling core: a fixed number of slots serves a queue of
requests, and a finished row's slot takes the next request, so finished rows stop costing
decode steps.

A static batch runs until its longest row ends: with answers of 10 to 96 tokens, about half
of its row-steps are spent on rows that have already finished. Here (as JetStream's
insert / generate, on the one decode loop of :class:`~ttc_jax.sampling.core.SamplingCore`):

* a queue (:class:`Queue`) hands out requests in its own order: :func:`serve` takes a
  fixed list shortest prompt first; a queue may also grow as requests end (a revision
  chain's next answer, :mod:`ttc_jax.search.revisions`), so dependent requests share the
  slots too. The first ``slots`` ready requests are prefilled into a cache of ``W +
  max_new_tokens + 2 x segment`` slots (W: the queue's longest possible prompt, rounded
  up);
* decoding runs in segments of at most ``segment`` steps (``SamplingCore.sample(...,
  steps=segment)``, one ``lax.while_loop`` in jit, leaving as soon as every row is done);
* after each segment, the requests that ended go to the queue (``Queue.finish``), and
  the ready ones are prefilled (in groups of one padded width) and inserted into the freed
  slots (``CachedModel.insert``: their keys and values at the slots just before the write
  index, every other slot of theirs masked, their next-token logits);
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

Utilization: every decode step of a call costs every slot; ``row_steps`` counts them,
``alive_steps`` (= the tokens generated) the ones that made a token and ``idle_steps`` the
ones of slots with no request (nothing ready).

Cost on CPU: a step costs every slot up to the longest live extent, so requests of very
different prompt widths in one pool pay the widest's attention. For revision chains (prompts
of 14 to 430 tokens) on 2 cores, 128 slots reached a utilization of 0.90 against static
batches' 0.60, and took 65 s against their 38 s (static batches grouped by width pay only
their own): on CPU the chains' default is static (``sampling.segment``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol, Sequence

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
  idle_steps: int = 0  # of those, the ones of slots with no request (the queue drained)

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


@dataclasses.dataclass
class Requests:
  """Requests a queue hands out: its own ids (ints), their prompts (BOS included, each
  within the model context), the raw data of their typed PRNG keys (``jax.random.key_data``:
  (k, *key shape) uint32; request r draws its j-th token from ``fold_in(key_r, j)``) and their
  token caps (k,) in [0, max_new_tokens]."""

  ids: Sequence[int]  # >= 0, distinct
  prompts: Sequence[Sequence[int]]
  key_data: np.ndarray
  limits: np.ndarray


class Queue(Protocol):
  """What :func:`serve_queue` serves: requests that may become ready as others end (a
  revision chain's next answer is known once its previous one is)."""

  total: int  # requests it hands out in all
  max_prompt: int  # the longest prompt it may hand out (the cache is sized for it)
  key_impl: object  # the PRNG implementation of its keys (``jax.random.key_impl``)

  def ready(self) -> int:
    """Requests that can start now."""

  def take(self, k: int) -> Requests:
    """The next ``k`` ready requests (the queue's order)."""

  def finish(self, rid: int, tokens: np.ndarray, logprobs: np.ndarray,
             confidence: np.ndarray, stopped: bool) -> None:
    """Request ``rid`` ended: its tokens (EOS included when ``stopped``), each one's
    log-probability and confidence (may make further requests ready)."""


@dataclasses.dataclass
class Usage:
  """What a served queue cost: decode steps x slots over every call, the ones that made a
  token, and the ones of slots with no request (nothing was ready, or the queue was
  drained)."""

  row_steps: int = 0
  alive_steps: int = 0
  idle_steps: int = 0
  calls: int = 0


class _Listed:
  """A fixed list of requests, shortest prompt first (a batch of new prompts is as wide as
  its longest); their outputs in request order."""

  def __init__(self, prompts, keys, limits, sp: SamplingParams, pad_id: int):
    n = len(prompts)
    self.prompts, self.limits = prompts, limits
    self.key_impl = jax.random.key_impl(keys)
    self.key_data = np.asarray(jax.random.key_data(keys))
    self.order = np.argsort([len(p) for p in prompts], kind="stable")
    self.total, self.max_prompt, self.taken = n, max(len(p) for p in prompts), 0
    self.tokens = np.full((n, sp.max_new_tokens), pad_id, np.int32)
    self.logprobs = np.zeros((n, sp.max_new_tokens), np.float32)
    self.confidence = np.zeros((n, sp.max_new_tokens, len(confidence_lib.STATS)), np.float32)
    self.lengths = np.zeros((n,), np.int32)
    self.stopped = np.zeros((n,), bool)

  def ready(self) -> int:
    return self.total - self.taken

  def take(self, k: int) -> Requests:
    ids = self.order[self.taken:self.taken + k]
    self.taken += len(ids)
    return Requests(ids=ids.tolist(), prompts=[self.prompts[r] for r in ids],
                    key_data=self.key_data[ids], limits=self.limits[ids])

  def finish(self, rid, tokens, logprobs, confidence, stopped) -> None:
    n = len(tokens)
    self.tokens[rid, :n], self.logprobs[rid, :n], self.confidence[rid, :n] = (
        tokens, logprobs, confidence)
    self.lengths[rid], self.stopped[rid] = n, stopped


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
    pad_multiple: prompt widths are rounded up to this.
  """
  n = len(prompts)
  if n == 0:
    raise ValueError("no prompts to sample from.")
  keys = jnp.asarray(keys)
  if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) or keys.shape != (n,):
    raise ValueError(f"keys must be ({n},) typed PRNG keys; got {keys.dtype}{tuple(keys.shape)}.")
  max_new = sp.max_new_tokens
  lim = np.full((n,), max_new, np.int32) if limits is None else np.asarray(limits, np.int32)
  if lim.shape != (n,) or lim.min() < 0 or lim.max() > max_new:
    raise ValueError(f"limits must be ({n},) integers in [0, max_new_tokens={max_new}].")
  queue = _Listed(prompts, keys, lim, sp, core.ids.pad_id)
  usage = serve_queue(core, queue, sp, slots=slots, segment=segment,
                      pad_multiple=pad_multiple, desc=desc, log_fn=log_fn)
  return Served(tokens=queue.tokens, logprobs=queue.logprobs, confidence=queue.confidence,
                lengths=queue.lengths, stopped=queue.stopped, row_steps=usage.row_steps,
                calls=usage.calls, idle_steps=usage.idle_steps)


def serve_queue(core: SamplingCore, queue: Queue, sp: SamplingParams, *, slots: int,
                segment: int = 8, pad_multiple: int = 16, desc: str = "sampling",
                log_fn: Callable[[str], None] | None = None) -> Usage:
  """Serves ``queue`` (see the module docstring) on ``slots`` rows: whenever slots are free
  after a segment, the ready requests fill them (each group of one padded width prefilled
  together and inserted). Returns what the decode cost; the outputs go to
  ``queue.finish``."""
  if slots < 1 or segment < 1:
    raise ValueError(f"slots={slots} and segment={segment} must be >= 1.")
  total = int(queue.total)
  if total < 1:
    raise ValueError("no requests to serve.")
  max_new = sp.max_new_tokens
  segment = min(segment, max_new)
  slots = min(slots, total)
  # The widest prompt, and room for two segments before a shift (a shift copies the cache
  # once; a larger cache costs every step: two segments balance them).
  cap = round_up(queue.max_prompt, pad_multiple)
  size = cap + max_new + 2 * segment
  pad_id = core.ids.pad_id
  impl = queue.key_impl

  req = np.full((slots,), -1, np.int64)  # the request in each slot (-1: none)
  lim = np.zeros((slots,), np.int32)  # its token cap
  start = np.zeros((slots,), np.int32)  # its tokens so far
  prev = np.full((slots,), -1, np.int32)  # its last token
  extent = np.zeros((slots,), np.int64)  # the slots before the index it reads
  key_data = None  # (slots, *key shape) raw key data of each slot's request
  keys = None  # those keys on the device (wrapped again only after a fill)
  got_tokens = np.zeros((slots, max_new), np.int32)
  got_logprobs = np.zeros((slots, max_new), np.float32)
  got_confidence = np.zeros((slots, max_new, len(confidence_lib.STATS)), np.float32)
  usage = Usage()
  finished = handed = 0
  kwargs = {} if log_fn is None else {"log_fn": log_fn}
  progress = Progress(total, desc, unit="rows", **kwargs)
  state, index = None, 0

  def move_to(target: int):
    """Shifts the cache so that the write index is ``target`` (>= every live extent)."""
    nonlocal state, index
    if target != index:
      state = core.shift(state, index - target)
      index = target

  def fill(free: np.ndarray):
    """Takes ready requests into the ``free`` slots."""
    nonlocal state, index, key_data, keys, handed
    k = min(len(free), int(queue.ready()))
    if not k:
      return
    new = queue.take(k)
    handed += k
    ids = np.asarray(new.ids, np.int64)
    if (ids.shape != (k,) or len(new.prompts) != k or len(new.key_data) != k
        or handed > total):
      raise RuntimeError(f"the queue handed out {len(new.ids)} ids, {len(new.prompts)} prompts "
                         f"and {len(new.key_data)} keys for {k} requests asked for ({handed} "
                         f"of its total {total} in all).")
    if ids.min() < 0:
      raise ValueError(f"request ids {ids.tolist()}: expected integers >= 0.")
    lengths = np.asarray([len(p) for p in new.prompts])
    limits = np.asarray(new.limits)
    if lengths.min() < 1:
      raise ValueError(f"request {ids[lengths.argmin()]}: an empty prompt (expected BOS at "
                       "least).")
    if lengths.max() > queue.max_prompt:
      raise ValueError(f"a request's prompt has {lengths.max()} tokens; the queue's "
                       f"max_prompt is {queue.max_prompt}.")
    if limits.shape != (k,) or limits.min() < 0 or limits.max() > max_new:
      raise ValueError(f"request limits {limits.tolist()}: expected {k} integers in [0, "
                       f"max_new_tokens={max_new}].")
    rows = free[:k]
    if key_data is None:
      key_data = np.zeros((slots,) + new.key_data.shape[1:], new.key_data.dtype)
    key_data[rows] = new.key_data
    keys = None
    req[rows], lim[rows], start[rows], prev[rows] = ids, limits, 0, -1
    if state is None:  # the first requests: prefilled into every slot at once
      width = round_up(int(lengths.max()), pad_multiple)
      fill_rows = [new.prompts[i] for i in range(k)] + [new.prompts[0]] * (slots - k)
      tok, valid = left_pad(fill_rows, width, pad_id)
      state, index = core.prefill(tok, valid, cache_size=size), width
      extent[rows] = width
      return
    # Prefilled in groups of one padded width: no short prompt pays for a long one.
    widths = np.asarray([round_up(int(n), pad_multiple) for n in lengths])
    if widths.max() > index:  # the new prompts go just before the index
      move_to(int(widths.max()))
    for width in np.unique(widths):
      members = np.flatnonzero(widths == width)
      count = _bucket(len(members), slots)
      prompts = [new.prompts[i] for i in members]
      tok, valid = left_pad(prompts + [prompts[0]] * (count - len(members)), int(width), pad_id)
      fresh = core.prefill(tok, valid, cache_size=int(width))
      state = core.insert(state, fresh, np.concatenate([rows[members],
                                                        np.full(count - len(members), -1)]))
      extent[rows[members]] = width

  fill(np.arange(slots))
  while finished < total:
    live = req >= 0
    if not live.any():
      raise RuntimeError(f"{desc}: {total - finished} requests are still to come but none is "
                         "ready and none is running (the queue never made them ready).")
    need = int(extent[live].max())
    # Reclaim what no live row reads: a call reads the slots up to its last step, so a
    # smaller index is a cheaper step (a shift copies the cache once).
    if index + segment > size or index - need >= SHIFT_SLACK:
      move_to(need)
    if keys is None:
      keys = jax.random.wrap_key_data(jnp.asarray(key_data), impl=impl)
    out = core.sample(state, keys, sp, active=live, limits=np.where(live, lim - start, 0),
                      steps=segment, start=start, prev=prev)
    state = out.state
    ran = int(out.steps)
    index += ran
    usage.row_steps += ran * slots
    usage.idle_steps += ran * int((~live).sum())
    usage.calls += 1
    got, lp, conf = np.asarray(out.tokens), np.asarray(out.logprobs), np.asarray(out.confidence)
    made, stop, done = np.asarray(out.lengths), np.asarray(out.stopped), np.asarray(out.done)
    usage.alive_steps += int(made[live].sum())
    for i in np.flatnonzero(live & (made > 0)):
      a, k = start[i], made[i]
      got_tokens[i, a:a + k], got_logprobs[i, a:a + k], got_confidence[i, a:a + k] = (
          got[i, :k], lp[i, :k], conf[i, :k])
      prev[i] = got[i, k - 1]
    start += np.where(live, made, 0).astype(np.int32)
    extent += ran  # every row's slots end at the index
    ended = np.flatnonzero(live & done)
    for i in ended:
      n = start[i]
      queue.finish(int(req[i]), got_tokens[i, :n].copy(), got_logprobs[i, :n].copy(),
                   got_confidence[i, :n].copy(), bool(stop[i]))
    req[ended] = -1
    finished += len(ended)
    progress.update(len(ended))
    fill(np.flatnonzero(req < 0))
  return usage
