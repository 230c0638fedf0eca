"""The sampling core: one jitted prefill and one jitted decode loop for every caller.

Policy sampling, Monte-Carlo rollouts, beam/lookahead expansions and revision
chains all go through :class:`SamplingCore`; they differ only in their
:class:`SamplingParams` (temperature, top-k/p, stop at EOS or at the step
delimiter, token budget) and in how they re-select rows between calls
(:meth:`SamplingCore.gather`). Its prefill / extend / gather live in the
head-agnostic :class:`CachedModel`, which the PRM's incremental scorer (a
value-head model) uses as they are.

Design (after gemma's ``_sampler_loop`` and big_vision's ``predict_fns``):

* Pure functions at the jit boundary: the model is split with ``nnx.split``
  once; ``nnx.merge`` happens inside the traced function.
* The whole decode loop is one ``lax.while_loop`` whose state is a
  ``flax.struct`` dataclass; no host round-trip per token.
* :class:`DecodeState` (KV cache + next-token logits) is what generation
  continues from. Every sampled token, including the one that stopped a row,
  is fed through the model before the loop ends, so a later call continues
  from the cached logits without re-encoding anything. The state is donated.
* Randomness is per row: row ``i`` draws its token ``t`` from
  ``fold_in(keys[i], t)``. A row's samples do not depend on what else is in the
  batch, on the batch size, or on the number of devices.
* The batch is sharded over the mesh axis ``'data'``; parameters and KV caches
  over ``'model'`` (attention heads, MLP units, the LM head's vocabulary:
  :mod:`ttc_jax.models.sharding`; replicated when the axis has one device). A
  batch that does not divide the data axis is padded with inactive rows. The
  decode loop runs under ``jax.shard_map``, manual over 'data' only: each data
  shard loops over its own rows with no collective per token across shards
  (within a shard, XLA partitions each layer over 'model', and the token choice
  reads the vocabulary gathered over 'model': see ``_sample_loop``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax import struct
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ttc_jax.models.transformer import KVCache
from ttc_jax.models.transformer import Transformer
from ttc_jax.parallel import DATA_AXIS
from ttc_jax.parallel import MODEL_AXIS
from ttc_jax.sampling import confidence as confidence_lib
from ttc_jax.sampling.cached import CachedModel
from ttc_jax.sampling.cached import DecodeState
from ttc_jax.sampling.cached import window_plan
from ttc_jax.sampling.cached import round_up
from ttc_jax.sampling.params import SamplingParams
from ttc_jax.sampling.params import SpecialIds
from ttc_jax.sampling.params import choose_tokens
from ttc_jax.sampling.params import process_logits
from ttc_jax.sampling.params import row_keys

__all__ = ["CachedModel", "DecodeState", "SampleOutput", "SamplingCore", "SamplingParams",
           "SHRINK_ROWS", "SpecialIds", "choose_tokens", "process_logits", "row_keys",
           "shrink_sizes",
           "window_plan"]

Array = jax.Array



# ----------------------------------------------------------------------------
# Pytrees
# ----------------------------------------------------------------------------
@struct.dataclass
class SampleOutput:
  """Result of one :meth:`SamplingCore.sample` call (``num_rows`` rows).

  tokens: (B, max_new_tokens) int32, ``pad_id`` after each row's length.
  logprobs: (B, max_new_tokens) float32, log-probability of each token under
    the model's unmodified distribution (temperature 1, no top-k/p); 0 past
    the row's length.
  confidence: (B, max_new_tokens, 2) float32, the policy's confidence at each
    token: DeepConf's top-k confidence and self-certainty of the same unmodified
    distribution (:mod:`ttc_jax.sampling.confidence`); 0 past the row's length.
  lengths: (B,) int32 number of new tokens.
  stopped: (B,) bool, True where the row ended on EOS or (if asked) on the
    step delimiter; False where it ran out of max_new_tokens or was inactive.
  state: the DecodeState to continue from (all padded rows; None after a shrinking call).
  done: (B,) bool, the row has ended (stopped, reached its limit or the context, or
    was inactive); False only for a row cut by ``steps`` (see :meth:`SamplingCore.sample`).
  steps: () int32, the decode steps the call ran (a shrinking call: the sum over its
    batches, which is one call's).
  row_steps: the row-steps the call paid: every row of a batch pays each of its steps
    (``steps`` x rows, or less for a shrinking call); the alive ones are ``sum(lengths)``.
  """

  tokens: Array
  logprobs: Array
  lengths: Array
  stopped: Array
  state: DecodeState
  confidence: Array
  done: Array
  steps: Array
  row_steps: Array

  def token_stats(self, width: int | None = None) -> np.ndarray:
    """(B, width, 3) on the host: each token's log-probability, then its ``confidence``
    (what a confidence verifier reads: :mod:`ttc_jax.verifiers.confidence`)."""
    width = self.tokens.shape[1] if width is None else width
    return np.concatenate([np.asarray(self.logprobs)[:, :width, None],
                           np.asarray(self.confidence)[:, :width]], axis=-1)


@struct.dataclass
class _Loop:
  step: Array
  tokens: Array
  logprobs: Array
  confidence: Array
  lengths: Array
  done: Array
  stopped: Array
  logits: Array
  cache: KVCache
  prev: Array  # (B,) each row's last token of this call (-1 before its first)

  @classmethod
  def start(cls, b: int, n: int, pad_id: int, active, limits, logits, cache,
            axis: str | None) -> "_Loop":
    """The loop's state before its first step: ``b`` rows of at most ``n`` tokens."""
    # Per-row buffers vary across shards under shard_map (their updates do).
    per_row = ((lambda x: jax.lax.pcast(x, (axis,), to="varying")) if axis is not None
               else (lambda x: x))
    return cls(
        step=jnp.zeros((), jnp.int32),
        tokens=per_row(jnp.full((b, n), pad_id, jnp.int32)),
        logprobs=per_row(jnp.zeros((b, n), jnp.float32)),
        confidence=per_row(jnp.zeros((b, n, len(confidence_lib.STATS)), jnp.float32)),
        lengths=per_row(jnp.zeros((b,), jnp.int32)),
        done=~active | (limits <= 0),
        stopped=per_row(jnp.zeros((b,), jnp.bool_)),
        logits=logits,
        cache=cache,
        prev=per_row(jnp.full((b,), -1, jnp.int32)))


@dataclasses.dataclass(frozen=True)
class _StopRule:
  """Which tokens a row may draw and where it stops, as arrays the loop body indexes:
  suppressed ids never drawn, stop ids banned before ``min_new_tokens``, and a stop at an
  EOS id, a step id (``stop_at_step``) or the second token of a split delimiter (lookup
  tables of (before, after) ids; index v stands for "no token yet")."""

  vocab: Array
  stop_ids: tuple[int, ...]
  suppressed: Array | None
  pairs: tuple[tuple[Array, Array], ...]

  @classmethod
  def of(cls, ids: SpecialIds, sp: SamplingParams, v: int) -> "_StopRule":
    table = lambda members: jnp.zeros((v + 1,), bool).at[jnp.array(members, jnp.int32)].set(True)
    return cls(vocab=jnp.arange(v),
               stop_ids=ids.eos_ids + (ids.step_ids if sp.stop_at_step else ()),
               suppressed=(jnp.zeros((v,), bool).at[jnp.array(ids.suppress_ids, jnp.int32)]
                           .set(True) if ids.suppress_ids else None),
               pairs=tuple((table(a), table(b)) for a, b in ids.step_pairs if a and b)
               if sp.stop_at_step else ())

  def mask(self, raw: Array, drawn: Array, sp: SamplingParams) -> Array:
    """The logits a row draws from: suppressed ids, and stop ids before min_new_tokens (a
    row's ``drawn`` tokens so far: (B,) or a scalar for all), out."""
    masked = raw if self.suppressed is None else jnp.where(self.suppressed, -jnp.inf, raw)
    if sp.min_new_tokens and self.stop_ids:
      banned = functools.reduce(jnp.logical_or, [self.vocab == i for i in self.stop_ids])
      early = jnp.reshape(drawn < sp.min_new_tokens, (-1, 1))
      masked = jnp.where(banned & early, -jnp.inf, masked)
    return masked

  def stops(self, tok: Array, prev: Array) -> Array:
    """Whether each row's token ``tok`` (after its ``prev``) ends it."""
    stop = functools.reduce(jnp.logical_or, [tok == i for i in self.stop_ids],
                            jnp.zeros_like(tok, dtype=bool))
    before_any = jnp.where(prev < 0, self.vocab.shape[0], prev)
    for before, after in self.pairs:
      stop = stop | (before[before_any] & after[tok])
    return stop


# ----------------------------------------------------------------------------
# Pure functions (the jit boundary)
# ----------------------------------------------------------------------------
def _sample_loop(graphdef, params, cache, logits, keys, active, limits, start, prev, leave,
                 *, sp: SamplingParams, ids: SpecialIds, plan: tuple[tuple[int, int], ...],
                 width: int, axis: str | None = None, whole_vocab: bool = False):
  """The decode loop. ``plan`` is a static list of segments (end_step, window):
  steps before ``end_step`` run on the cache cut to its first ``window`` slots; the
  loop runs at most ``width`` steps (the token buffers' width).

  ``leave`` (2,) int32, dynamic (no program per value): [at most this many steps, leave
  once at most this many rows are alive]: [width, 0] runs the rows to their ends; a
  shrinking call (:meth:`SamplingCore.sample`'s ``shrink``) leaves early to go on with
  its live rows in a smaller batch (on one data shard: the row count is the shard's own).

  ``start`` (B,): the tokens each row drew before this call (a request continued from an
  earlier call: continuous batching), ``prev`` (B,) its last one (-1: none). Row i draws
  its j-th token of the request from ``fold_in(keys[i], j)``, so a request's tokens do
  not depend on how its decoding is cut into calls, nor on when it started.

  whole_vocab: gather each step's logits over the (auto) 'model' axis before the
  token choice (a mesh with 'model' shards, whose LM head splits the vocabulary).
  The choice (masks, temperature, top-k/p, the draw, the log-probability) then runs
  whole on every device of a data shard, exactly as on one device, and its only
  collective is that all-gather within the shard. Left to the partitioner, the
  vocabulary-split top-p sort was followed by a collective-permute (the reverse of a
  split axis), which XLA (its CPU runtime at least) rendezvouses over every device
  of the program, all data shards included: a shard whose rows were done had left
  its loop and never joined, and the others waited until XLA aborted the process.

  Row i generates at most ``limits[i]`` tokens, and never a token past the model
  context: its RoPE position (``cache.pos``) stays below ``max_seq_len``. Both are
  the row's own quantities, so where a row stops never depends on the others.

  Decode is bound by reading the whole cache every step, so each segment is one
  ``lax.while_loop`` over a cache sized to what it can reach; between segments
  the cache grows by a pad (one copy per segment, not per token). Slicing the
  carried cache inside the loop instead makes XLA copy it every step.
  All segments exit as soon as every row is done (or as ``leave`` says).
  """
  model: Transformer = nnx.merge(graphdef, params)
  b, v = logits.shape
  limits = jnp.minimum(limits, model.config.max_seq_len - cache.pos)
  rule = _StopRule.of(ids, sp, v)
  # The logits replicated over the auto axes (within this data shard), or as they are.
  whole = ((lambda x: jax.lax.with_sharding_constraint(x, P(None, None))) if whole_vocab
           else (lambda x: x))

  def body(s: _Loop) -> _Loop:
    raw = whole(s.logits)
    drawn = start + s.lengths  # an alive row's tokens of its request so far
    tok = choose_tokens(process_logits(rule.mask(raw, drawn, sp), sp), keys, drawn, sp)
    alive = ~s.done
    full = jax.nn.log_softmax(raw, axis=-1)
    logp = jnp.take_along_axis(full, tok[:, None], axis=1)[:, 0]
    tok = jnp.where(alive, tok, ids.pad_id)
    logp = jnp.where(alive, logp, 0.0)
    conf = jnp.where(alive[:, None], confidence_lib.token_confidence(full), 0.0)
    stop = rule.stops(tok, s.prev) & alive
    new_logits, cache = model(tok[:, None], alive[:, None], s.cache, readout="last")
    lengths = s.lengths + alive.astype(jnp.int32)
    return _Loop(
        step=s.step + 1,
        tokens=jax.lax.dynamic_update_slice(s.tokens, tok[:, None], (0, s.step)),
        logprobs=jax.lax.dynamic_update_slice(s.logprobs, logp[:, None], (0, s.step)),
        confidence=jax.lax.dynamic_update_slice(s.confidence, conf[:, None], (0, s.step, 0)),
        lengths=lengths,
        done=s.done | stop | (lengths >= limits),
        stopped=s.stopped | stop,
        logits=jnp.where(alive[:, None], new_logits.astype(jnp.float32), raw),
        cache=cache,
        prev=jnp.where(alive, tok, s.prev))

  s = _Loop.start(b, width, ids.pad_id, active, limits, logits, cache, axis)
  s = s.replace(prev=jnp.where(prev >= 0, prev, s.prev))
  size = cache.size
  for end, window in plan:
    s = s.replace(cache=s.cache.resized(window))
    s = jax.lax.while_loop(
        lambda s, end=end: ((s.step < end) & (s.step < leave[0])
                            & (jnp.sum(~s.done) > leave[1])), body, s)
  cache = s.cache.resized(size)
  if axis is not None:
    # Each shard's loop stops when its own rows are done; the shared write index
    # is the furthest any shard got (the others' unwritten slots are masked holes).
    cache = cache.replace(index=jax.lax.pmax(cache.index, axis))
  ran = jnp.full((b,), s.step, jnp.int32)  # per row: under shard_map, its shard's steps
  return (s.tokens, s.logprobs, s.confidence, s.lengths, s.stopped, s.done, ran, cache,
          s.logits)


def _cache_spec(cache: KVCache, rows: P) -> KVCache:
  """shard_map specs of a cache: every leaf split by rows, the write index replicated."""
  return KVCache(k=(rows,) * len(cache.k), v=(rows,) * len(cache.v), mask=rows, pos=rows,
                 index=P())


def _sample_sharded(graphdef, params, cache, logits, keys, active, limits, start, prev, leave,
                    *,
                    sp: SamplingParams, ids: SpecialIds, plan: tuple[tuple[int, int], ...],
                    width: int, mesh: Mesh):
  """The decode loop run per shard of the 'data' axis (``jax.shard_map``).

  Every row's computation is local to its shard, so each device runs its own
  ``while_loop`` with no collective per token (under plain jit the loop's
  "all rows done?" test is an all-reduce, a cross-device barrier every step).
  """
  rows = P(DATA_AXIS)
  cspec = _cache_spec(cache, rows)
  # With 'model' shards the loop is manual over 'data' only; XLA partitions each layer
  # over 'model' (parameters and caches keep their 'model' layout), and the token choice
  # reads the whole vocabulary (``whole_vocab``): no collective of the loop leaves a shard.
  split = mesh.shape[MODEL_AXIS] > 1
  loop = functools.partial(_sample_loop, graphdef, sp=sp, ids=ids, plan=plan, width=width,
                           axis=DATA_AXIS, whole_vocab=split)
  manual = {DATA_AXIS} if split else set(mesh.axis_names)
  return jax.shard_map(
      loop, mesh=mesh, in_specs=(P(), cspec, rows, rows, rows, rows, rows, rows, P()),
      out_specs=(rows,) * 7 + (cspec, rows), axis_names=manual)(
          params, cache, logits, keys, active, limits, start, prev, leave)


# The fewest rows the library's shrinking calls decode (``sample(..., shrink=SHRINK_ROWS)``:
# speed only, the same tokens): generate's static batches and the MC rollouts, thousands of
# rows per stage. Revision chains and best-of-N in search do not shrink: on the study's
# (batches of a few hundred rows) the compiles of the smaller batches cost more than the
# row-steps saved (06f4741's study: revision_sweep 285 -> 329 s, search_sweep 445 -> 452 s).
SHRINK_ROWS = 32
SHRINK_SLOTS = 64


def shrink_sizes(rows: int, data: int, floor: int) -> list[int]:
  """The batch sizes a shrinking call of ``rows`` rows goes down through (ascending, each
  below ``rows``): eighths of the batch down to a quarter, then halvings, none below
  ``floor``, each a multiple of the data axis ``data``. Few sizes: each is a compiled
  decode loop; eighths: on the policy's answer lengths about 0.92 of the row-steps paid
  made a token, against 0.80 with halvings only (by simulation)."""
  sizes = {rows * k // 8 for k in range(2, 8)}
  half = rows // 4
  while half > 1:
    half //= 2
    sizes.add(half)
  sizes = {-(-s // data) * data for s in sizes if s >= max(floor, 1)}
  return sorted(s for s in sizes if s < rows)


# ----------------------------------------------------------------------------
# The core
# ----------------------------------------------------------------------------
class SamplingCore(CachedModel):
  """An LM-head :class:`CachedModel` that samples: the one decode loop of ttc_jax.

  Example::

    core = SamplingCore(model, ids=SpecialIds(pad_id=0, eos_ids=(2,), step_ids=(5,)))
    state = core.prefill(tokens, valid, cache_size=160)
    out = core.sample(state, row_keys(seed, problem_ids, sample_ids),
                      SamplingParams(temperature=1.0, max_new_tokens=128))
    state = core.gather(out.state, parent_rows)   # tree expansion
    out = core.sample(state, keys, params)       # continue, nothing re-encoded
  """

  def __init__(self, model: Transformer, ids: SpecialIds = SpecialIds(),
               mesh: Mesh | None = None, window_granularity: int = 32):
    if model.config.head != "lm":
      raise ValueError(f"SamplingCore needs an LM-head model; got head={model.config.head!r}.")
    pair_ids = tuple(i for a, b in ids.step_pairs for i in a + b)
    for name in ("eos_ids", "step_ids", "suppress_ids", "step_pairs"):  # pad_id: CachedModel's
      for i in (pair_ids if name == "step_pairs" else getattr(ids, name)):
        if not 0 <= i < model.config.vocab_size:
          raise ValueError(f"{name} holds {i}, outside the model vocab "
                           f"[0, {model.config.vocab_size}).")
    super().__init__(model, mesh=mesh, pad_id=ids.pad_id, window_granularity=window_granularity)
    self.ids = ids
    self._sample = jax.jit(_sample_sharded, static_argnums=(0,),
                           static_argnames=("sp", "ids", "plan", "width", "mesh"),
                           donate_argnums=(2, 3))

  def sample(self, state: DecodeState, keys: Array, sp: SamplingParams,
             active=None, limits=None, *, steps: int | None = None, start=None,
             prev=None, shrink: int = 0) -> SampleOutput:
    """Samples up to ``sp.max_new_tokens`` per row, continuing from ``state``.

    keys: (num_rows,) typed PRNG keys (see :func:`row_keys`); ignored if greedy.
    active: optional (num_rows,) bool; inactive rows generate nothing.
    limits: optional (num_rows,) ints in [0, max_new_tokens]: row i generates at
      most ``limits[i]`` tokens (a per-solution token cap). Whatever the limits,
      no row goes past the model context (``max_seq_len`` tokens).
    steps: at most this many decode steps (default ``max_new_tokens``): a segment of a
      longer decode, whose rows not ``done`` go on in a later call (continuous batching:
      :mod:`ttc_jax.sampling.serving`). The token buffers are ``steps`` wide.
    start, prev: optional (num_rows,) ints, each row's tokens drawn before this call and
      its last one (-1: none), for a row continued from an earlier segment: its next
      token is its ``start[i]``-th (its key's fold-in, ``min_new_tokens``) and a split
      step delimiter is recognised across the two calls.
    shrink: 0, or the fewest rows a shrinking call decodes: finished rows stop costing
      decode steps. Whenever the live rows fit a smaller batch of :func:`shrink_sizes`,
      the loop leaves, the live rows are gathered into that batch, and they go on from
      where they were (their keys, token counts and last tokens carried: the same
      tokens as one call). The output has no ``state`` (None): for callers that only
      read the tokens. On a mesh of several data shards the call does not shrink: on 2
      XLA:CPU devices a gather of rows across devices took 59 ms against 7 on one, and
      shards leaving on their own rows left the next batch's rows uneven (a shard that
      left early waits, then its rows lag: more row-steps than one call on 8 devices of
      8 rows); leaving together (a scalar all-reduce per step) made no step faster than
      one call there (make bench's varied row on 2 devices).
    A row that reaches its limit or the context is done but not ``stopped``.
    ``state`` is donated; continue from ``output.state``.
    """
    if not isinstance(sp, SamplingParams):
      raise TypeError(f"sp must be SamplingParams, got {type(sp).__name__}.")
    b = state.num_rows
    keys = jnp.asarray(keys)
    if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) or keys.shape != (b,):
      raise ValueError(
          f"keys must be typed PRNG keys of shape ({b},) (see row_keys); got "
          f"{keys.dtype}{tuple(keys.shape)}.")
    width = sp.max_new_tokens if steps is None else int(steps)
    if not 1 <= width <= sp.max_new_tokens:
      raise ValueError(f"steps={steps}: expected an integer in [1, max_new_tokens="
                       f"{sp.max_new_tokens}].")
    act = np.ones((b,), bool) if active is None else np.asarray(active, bool)
    if act.shape != (b,):
      raise ValueError(f"active has shape {act.shape}; expected ({b},).")
    lim = (np.full((b,), sp.max_new_tokens, np.int32) if limits is None
           else np.asarray(limits, np.int32))
    if lim.shape != (b,) or lim.min() < 0 or lim.max() > sp.max_new_tokens:
      raise ValueError(f"limits must be ({b},) integers in [0, max_new_tokens="
                       f"{sp.max_new_tokens}]; got shape {lim.shape}, range "
                       f"[{lim.min()}, {lim.max()}].")
    per_row = {}
    for name, x, fill in (("start", start, 0), ("prev", prev, -1)):
      x = np.full((b,), fill, np.int32) if x is None else np.asarray(x, np.int32)
      if x.shape != (b,) or x.min() < fill:
        raise ValueError(f"{name} must be ({b},) integers >= {fill}; got shape {x.shape}.")
      per_row[name] = x
    if isinstance(shrink, bool) or not isinstance(shrink, (int, np.integer)) or shrink < 0:
      raise ValueError(f"shrink={shrink!r}: expected an integer >= 0 (0: off).")
    if shrink and steps is not None:
      raise ValueError(f"shrink={shrink} with steps={steps}: a shrinking call runs its rows to "
                       "their ends (steps=None).")
    if shrink and self.data_size == 1:
      return self._sample_shrinking(state, keys, sp, act, lim, per_row["start"],
                                    per_row["prev"], width, int(shrink))
    out = self._call(state, keys, sp, act, lim, per_row["start"], per_row["prev"], width)
    return out.replace(state=None) if shrink else out

  def _call(self, state: DecodeState, keys: Array, sp: SamplingParams, act, lim, start,
            prev, width: int, *, leave_at: int = 0, room: int | None = None,
            granularity: int | None = None) -> SampleOutput:
    """One decode loop on checked host inputs: at most ``room`` steps (default
    ``width``), leaving once at most ``leave_at`` rows are alive (0: all done), its
    windows grown by ``granularity`` (default the core's)."""
    b, bp = state.num_rows, state.padded_rows
    room = width if room is None else room
    used = self._check_room(state, room)
    plan = window_plan(used, width, state.cache.size, self.window_granularity
                       if granularity is None else granularity)
    put = lambda x, fill: self._put_rows(self._pad_rows(x, bp, fill))  # noqa: E731
    if bp != b:
      keys = jnp.concatenate([keys, jnp.broadcast_to(keys[:1], (bp - b,))])
    keys = self._put_rows(keys)
    leave = jnp.asarray([room, leave_at], jnp.int32)
    tokens, logprobs, confidence, lengths, stopped, done, ran, cache, logits = self._sample(
        self.graphdef, self.params, state.cache, state.logits, keys, put(act, False),
        put(lim, 0), put(start, 0), put(prev, -1), leave, sp=sp, ids=self.ids, plan=plan,
        width=width, mesh=self.mesh)
    if bp != b:
      tokens, logprobs, confidence, lengths, stopped, done = (
          x[:b] for x in (tokens, logprobs, confidence, lengths, stopped, done))
    steps = jnp.max(ran)
    return SampleOutput(tokens=tokens, logprobs=logprobs, lengths=lengths, stopped=stopped,
                        state=DecodeState(cache=cache, logits=logits, num_rows=b),
                        confidence=confidence, done=done, steps=steps, row_steps=steps * b)

  def _sample_shrinking(self, state: DecodeState, keys: Array, sp: SamplingParams, act, lim,
                        start, prev, width: int, shrink: int) -> SampleOutput:
    """:meth:`sample` with ``shrink``: calls on ever smaller batches of the live rows."""
    b = state.num_rows
    sizes = shrink_sizes(b, self.data_size, shrink)
    tokens = np.full((b, width), self.ids.pad_id, np.int32)
    logprobs = np.zeros((b, width), np.float32)
    confidence = np.zeros((b, width, len(confidence_lib.STATS)), np.float32)
    made = np.zeros((b,), np.int32)  # tokens each row drew in this call so far
    stopped = np.zeros((b,), bool)
    done = ~act | (lim <= 0)
    rows = np.arange(b)  # the caller's row at each row of the batch (-1: padding)
    ran = row_steps = 0
    while True:
      n = state.num_rows
      live = act & (rows >= 0)
      smaller = [s for s in sizes if s < n]
      # At most the most tokens a live row may still draw.
      room = int(np.max(np.where(live, lim, 0), initial=0)) if n < b else width
      out = self._call(state, keys, sp, live, np.where(live, lim, 0), start, prev, width,
                       leave_at=smaller[-1] if smaller else 0, room=max(room, 1),
                       granularity=None if n == b else 0)
      steps = int(out.steps)
      ran, row_steps = ran + steps, row_steps + steps * n
      got, k = np.asarray(out.tokens), np.asarray(out.lengths)
      mine = rows >= 0
      r, i = rows[mine], np.flatnonzero(mine)
      cols = made[r][:, None] + np.arange(width)[None, :]
      keep = np.arange(width)[None, :] < k[i][:, None]
      rr = np.broadcast_to(r[:, None], cols.shape)
      tokens[rr[keep], cols[keep]] = got[i][keep]
      logprobs[rr[keep], cols[keep]] = np.asarray(out.logprobs)[i][keep]
      confidence[rr[keep], cols[keep]] = np.asarray(out.confidence)[i][keep]
      made[r] += k[i]
      stopped[r] = np.asarray(out.stopped)[i]
      done[r] = np.asarray(out.done)[i]
      go = np.flatnonzero(mine & ~np.asarray(out.done))
      if not go.size:
        break
      # The live rows, padded with inactive copies of the first, into the smallest size
      # that holds them, down the sizes one at a time (few compiled gathers: one per
      # pair of neighbouring sizes), in caches of a size rounded up by SHRINK_SLOTS (one
      # decode loop per batch size for many prompt widths; it reads them whole).
      fit = next(s for s in sizes + [n] if s >= go.size)
      if fit >= n:  # the loop leaves early only when the live rows fit a smaller size
        raise RuntimeError(f"a shrinking call left its loop with {go.size} of {n} rows live.")
      pick = np.concatenate([go, np.repeat(go[:1], fit - go.size)])
      need = int(out.state.cache.index) + int((lim - k)[go].max())
      state, at, index = out.state, n, go
      while at > fit:
        at = max(s for s in sizes if s < at)
        index = np.concatenate([index, np.repeat(index[:1], at - index.size)])[:at]
        state = self.gather(state, index,
                            size=round_up(max(state.cache.size, need), SHRINK_SLOTS))
        index = np.arange(go.size)
      keys, lim, start = keys[jnp.asarray(pick)], lim[pick] - k[pick], start[pick] + k[pick]
      last = got[pick, np.maximum(k[pick] - 1, 0)]
      prev = np.where(k[pick] > 0, last, prev[pick])
      act = np.arange(fit) < go.size
      rows = np.where(act, rows[pick], -1)
    return SampleOutput(tokens=tokens, logprobs=logprobs, lengths=made, stopped=stopped,
                        state=None, confidence=confidence, done=done,
                        steps=np.int32(ran), row_steps=row_steps)

  def generate(self, tokens, valid, keys, sp: SamplingParams, *, limits=None,
               shrink: int = 0) -> SampleOutput:
    """Prefill + sample in one call; the cache holds the prompts and max_new_tokens.

    Every row must have room for ``max_new_tokens`` within the context (an
    error otherwise, never a silent cut); ``limits`` and ``shrink`` as in :meth:`sample`.
    """
    tokens = np.asarray(tokens)
    valid = np.ones_like(tokens, bool) if valid is None else np.asarray(valid, bool)
    longest = int(valid.sum(1).max()) if valid.size else 0
    if longest + sp.max_new_tokens > self.config.max_seq_len:
      raise ValueError(
          f"the longest prompt ({longest} tokens) + max_new_tokens ({sp.max_new_tokens}) = "
          f"{longest + sp.max_new_tokens} exceeds the model context max_seq_len="
          f"{self.config.max_seq_len}.")
    state = self.prefill(tokens, valid, cache_size=tokens.shape[1] + sp.max_new_tokens)
    return self.sample(state, keys, sp, limits=limits, shrink=shrink)
