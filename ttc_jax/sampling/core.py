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
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax import struct
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ttc_jax.models import sharding
from ttc_jax.models.transformer import KVCache
from ttc_jax.models.transformer import Transformer
from ttc_jax.parallel import DATA_AXIS
from ttc_jax.parallel import MODEL_AXIS
from ttc_jax.parallel import local_mesh

Array = jax.Array


# ----------------------------------------------------------------------------
# Static configuration
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How to sample. Frozen and hashable: passed to jit as a static argument.

  temperature: 0 is greedy (argmax); > 0 scales the logits.
  top_k: keep the k most likely tokens (0: off).
  top_p: nucleus sampling, keep the smallest set of tokens whose probability
    reaches top_p (1.0: off).
  max_new_tokens: at most this many tokens per row per call.
  min_new_tokens: EOS (and the step delimiter, when stopping on it) cannot be
    sampled before this many tokens.
  stop_at_step: also stop a row at the step delimiter (one reasoning step at a
    time, for tree search). A row always stops at EOS.
  """

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  max_new_tokens: int = 128
  min_new_tokens: int = 0
  stop_at_step: bool = False

  def __post_init__(self):
    if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
            and self.temperature >= 0):
      raise ValueError(f"temperature={self.temperature!r}: expected a finite number >= 0.")
    if not isinstance(self.top_k, int) or self.top_k < 0:
      raise ValueError(f"top_k={self.top_k!r}: expected an integer >= 0 (0 disables top-k).")
    if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
      raise ValueError(f"top_p={self.top_p!r}: expected a number in (0, 1] (1 disables top-p).")
    if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={self.max_new_tokens!r}: expected an integer >= 1.")
    if (not isinstance(self.min_new_tokens, int) or
        not 0 <= self.min_new_tokens <= self.max_new_tokens):
      raise ValueError(
          f"min_new_tokens={self.min_new_tokens!r}: expected an integer in "
          f"[0, max_new_tokens={self.max_new_tokens}].")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """Token ids the loop needs.

  eos_ids: a row ends at any of these (a chat model may have several).
  step_ids: a step ends at any of these (with ``stop_at_step``); a real
    tokenizer ends a step ("\\n\\n") with many different tokens.
  Both may be empty (never stop on them).
  step_pairs: (before, after) id sets: a step also ends at a token of ``after`` right
    after a token of ``before`` generated in the same call (a delimiter split over two
    tokens, "\\n" then "\\n"; ``HFTokenizer.step_pairs``).
  suppress_ids: never sampled (pad, BOS, unknown and unused vocabulary pieces;
    ``suppress_tokens`` in transformers): their logits are -inf before the
    temperature / top-k / top-p, so a model never emits text it was never
    trained to produce. Log-probabilities stay those of the model.
  """

  pad_id: int = 0
  eos_ids: tuple[int, ...] = ()
  step_ids: tuple[int, ...] = ()
  suppress_ids: tuple[int, ...] = ()
  step_pairs: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()

  def __post_init__(self):
    for name in ("eos_ids", "step_ids", "suppress_ids"):
      value = getattr(self, name)
      if isinstance(value, (int, np.integer)) or value is None:
        raise TypeError(f"{name}={value!r}: expected a tuple of token ids, e.g. ({value},).")
      ids = tuple(int(i) for i in value)
      if any(i < 0 for i in ids):
        raise ValueError(f"{name}={ids}: token ids must be >= 0.")
      object.__setattr__(self, name, ids)
    pairs = tuple((tuple(int(i) for i in a), tuple(int(i) for i in b))
                  for a, b in self.step_pairs)
    if any(i < 0 for a, b in pairs for i in a + b):
      raise ValueError("step_pairs: token ids must be >= 0.")
    object.__setattr__(self, "step_pairs", pairs)
    clash = set(self.suppress_ids) & set(self.eos_ids + self.step_ids)
    if clash:
      raise ValueError(f"suppress_ids {sorted(clash)} are also eos/step ids: a row could never "
                       "stop on them.")


# ----------------------------------------------------------------------------
# Pytrees
# ----------------------------------------------------------------------------
@struct.dataclass
class DecodeState:
  """What generation continues from: the KV cache and the next-token logits.

  ``num_rows`` rows are real; rows beyond it pad the batch to a multiple of the
  data axis and are never active.
  """

  cache: KVCache
  # The head's output at each row's last token, float32: next-token logits (B, V)
  # for an LM head, the value logit (B,) for a value head.
  logits: Array
  num_rows: int = struct.field(pytree_node=False, default=-1)

  @property
  def padded_rows(self) -> int:
    return self.logits.shape[0]


@struct.dataclass
class SampleOutput:
  """Result of one :meth:`SamplingCore.sample` call (``num_rows`` rows).

  tokens: (B, max_new_tokens) int32, ``pad_id`` after each row's length.
  logprobs: (B, max_new_tokens) float32, log-probability of each token under
    the model's unmodified distribution (temperature 1, no top-k/p); 0 past
    the row's length.
  lengths: (B,) int32 number of new tokens.
  stopped: (B,) bool, True where the row ended on EOS or (if asked) on the
    step delimiter; False where it ran out of max_new_tokens or was inactive.
  state: the DecodeState to continue from (all padded rows).
  """

  tokens: Array
  logprobs: Array
  lengths: Array
  stopped: Array
  state: DecodeState


@struct.dataclass
class _Loop:
  step: Array
  tokens: Array
  logprobs: Array
  lengths: Array
  done: Array
  stopped: Array
  logits: Array
  cache: KVCache
  prev: Array  # (B,) each row's last token of this call (-1 before its first)


# ----------------------------------------------------------------------------
# Token choice
# ----------------------------------------------------------------------------
def process_logits(logits: Array, sp: SamplingParams) -> Array:
  """Applies temperature, top-k and top-p to float32 logits (B, V).

  Tokens outside the allowed set get -inf.
  """
  logits = logits.astype(jnp.float32)
  if sp.greedy:
    return logits
  logits = logits / sp.temperature
  neg_inf = jnp.array(-jnp.inf, jnp.float32)
  if sp.top_k and sp.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, sp.top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, neg_inf, logits)
  if sp.top_p < 1.0:
    # Descending as the ascending sort of the negated logits (the same values): a reverse
    # of a vocabulary split over devices is a collective-permute, which XLA:CPU runs over
    # every device of the program (see _sample_loop).
    sorted_logits = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each token
    keep = before < sp.top_p  # the most likely token is always kept
    cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, neg_inf, logits)
  return logits


def choose_tokens(logits: Array, keys: Array, step: Array, sp: SamplingParams) -> Array:
  """Draws one token per row from processed logits (B, V).

  Row i uses ``fold_in(keys[i], step)``; greedy ignores the keys.
  """
  if sp.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
  return jax.vmap(jax.random.categorical)(step_keys, logits).astype(jnp.int32)


def row_keys(seed: int, *ids: Sequence[int] | np.ndarray | int) -> Array:
  """Per-row keys derived from (seed, id_1, id_2, ...), e.g. (seed, problem, sample).

  Each id argument is broadcast to the batch; key i is
  ``fold_in(...fold_in(key(seed), ids_1[i])..., ids_n[i])`` (one compiled call).
  """
  cols = np.broadcast_arrays(*[np.asarray(i, np.uint32) for i in ids]) if ids else []
  n = cols[0].shape[0] if cols and cols[0].ndim else 1
  base = jax.random.key(seed)
  if not cols:
    return jnp.broadcast_to(base, (n,))
  return _fold_in_columns(base, jnp.asarray(np.stack([np.broadcast_to(c, (n,)) for c in cols])))


@jax.jit
def _fold_in_columns(key: Array, cols: Array) -> Array:
  keys = jnp.broadcast_to(key, (cols.shape[1],))
  for col in cols:
    keys = jax.vmap(jax.random.fold_in)(keys, col)
  return keys


# ----------------------------------------------------------------------------
# Pure functions (the jit boundary)
# ----------------------------------------------------------------------------
def _place(cache: KVCache, kv: NamedSharding | None) -> KVCache:
  """The cache's keys and values laid out as ``kv`` (None: as XLA chooses)."""
  if kv is None:
    return cache
  put = lambda x: jax.lax.with_sharding_constraint(x, kv)
  return cache.replace(k=tuple(map(put, cache.k)), v=tuple(map(put, cache.v)))


def _prefill(graphdef, params, tokens, valid, *, cache_size: int, window: int,
             kv: NamedSharding | None = None):
  model: Transformer = nnx.merge(graphdef, params)
  cache = _place(KVCache.empty(model.config, tokens.shape[0], window), kv)
  logits, cache = model(tokens, valid, cache, readout="last")
  return _place(cache.resized(cache_size), kv), logits.astype(jnp.float32)


def _extend(graphdef, params, cache, logits, tokens, valid, *, window: int,
            per_token: bool = False, kv: NamedSharding | None = None):
  """Feeds a chunk (B, T) to the cache.

  Returns the cache, the head output at each row's last new token (rows with no
  valid token keep ``logits``) and, if ``per_token``, the head output at every
  new token (else None).
  """
  model: Transformer = nnx.merge(graphdef, params)
  size = cache.size
  new, cache = model(tokens, valid, cache.resized(window), readout="all" if per_token else "last")
  new = new.astype(jnp.float32)
  every = None
  if per_token:
    every = new
    last = jnp.max(jnp.where(valid, jnp.arange(tokens.shape[1])[None], -1), axis=1)
    idx = jnp.maximum(last, 0).reshape((-1, 1) + (1,) * (new.ndim - 2))
    new = jnp.take_along_axis(new, idx, axis=1)[:, 0]
  has = valid.any(axis=1).reshape((-1,) + (1,) * (logits.ndim - 1))
  return _place(cache.resized(size), kv), jnp.where(has, new, logits), every


def _sample_loop(graphdef, params, cache, logits, keys, active, limits, *,
                 sp: SamplingParams, ids: SpecialIds, plan: tuple[tuple[int, int], ...],
                 axis: str | None = None, whole_vocab: bool = False):
  """The decode loop. ``plan`` is a static list of segments (end_step, window):
  steps before ``end_step`` run on the cache cut to its first ``window`` slots.

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
  All segments exit as soon as every row is done.
  """
  model: Transformer = nnx.merge(graphdef, params)
  b, v = logits.shape
  n = sp.max_new_tokens
  vocab = jnp.arange(v)
  stop_ids = ids.eos_ids + (ids.step_ids if sp.stop_at_step else ())
  limits = jnp.minimum(limits, model.config.max_seq_len - cache.pos)

  suppressed = (jnp.zeros((v,), bool).at[jnp.array(ids.suppress_ids, jnp.int32)].set(True)
                if ids.suppress_ids else None)
  table = lambda members: jnp.zeros((v + 1,), bool).at[jnp.array(members, jnp.int32)].set(True)
  # Lookup tables of (before, after) split delimiters; index v stands for "no token yet".
  pairs = ([(table(a), table(b)) for a, b in ids.step_pairs if a and b]
           if sp.stop_at_step else [])
  # The logits replicated over the auto axes (within this data shard), or as they are.
  whole = ((lambda x: jax.lax.with_sharding_constraint(x, P(None, None))) if whole_vocab
           else (lambda x: x))

  def body(s: _Loop) -> _Loop:
    raw = whole(s.logits)
    masked = raw if suppressed is None else jnp.where(suppressed, -jnp.inf, raw)
    if sp.min_new_tokens and stop_ids:
      banned = functools.reduce(jnp.logical_or, [vocab == i for i in stop_ids])
      masked = jnp.where(banned & (s.step < sp.min_new_tokens), -jnp.inf, masked)
    tok = choose_tokens(process_logits(masked, sp), keys, s.step, sp)
    alive = ~s.done
    logp = jnp.take_along_axis(jax.nn.log_softmax(raw, axis=-1), tok[:, None], axis=1)[:, 0]
    tok = jnp.where(alive, tok, ids.pad_id)
    logp = jnp.where(alive, logp, 0.0)
    stop = functools.reduce(jnp.logical_or, [tok == i for i in stop_ids],
                            jnp.zeros_like(alive))
    prev = jnp.where(s.prev < 0, v, s.prev)
    for before, after in pairs:
      stop = stop | (before[prev] & after[tok])
    stop = stop & alive
    new_logits, cache = model(tok[:, None], alive[:, None], s.cache, readout="last")
    lengths = s.lengths + alive.astype(jnp.int32)
    return _Loop(
        step=s.step + 1,
        tokens=jax.lax.dynamic_update_slice(s.tokens, tok[:, None], (0, s.step)),
        logprobs=jax.lax.dynamic_update_slice(s.logprobs, logp[:, None], (0, s.step)),
        lengths=lengths,
        done=s.done | stop | (lengths >= limits),
        stopped=s.stopped | stop,
        logits=jnp.where(alive[:, None], new_logits.astype(jnp.float32), raw),
        cache=cache,
        prev=jnp.where(alive, tok, s.prev))

  # Per-row buffers vary across shards under shard_map (their updates do).
  per_row = ((lambda x: jax.lax.pcast(x, (axis,), to="varying")) if axis is not None
             else (lambda x: x))
  s = _Loop(
      step=jnp.zeros((), jnp.int32),
      tokens=per_row(jnp.full((b, n), ids.pad_id, jnp.int32)),
      logprobs=per_row(jnp.zeros((b, n), jnp.float32)),
      lengths=per_row(jnp.zeros((b,), jnp.int32)),
      done=~active | (limits <= 0),
      stopped=per_row(jnp.zeros((b,), jnp.bool_)),
      logits=logits,
      cache=cache,
      prev=per_row(jnp.full((b,), -1, jnp.int32)))
  size = cache.size
  for end, window in plan:
    s = s.replace(cache=s.cache.resized(window))
    s = jax.lax.while_loop(lambda s, end=end: (s.step < end) & ~jnp.all(s.done), body, s)
  cache = s.cache.resized(size)
  if axis is not None:
    # Each shard's loop stops when its own rows are done; the shared write index
    # is the furthest any shard got (the others' unwritten slots are masked holes).
    cache = cache.replace(index=jax.lax.pmax(cache.index, axis))
  return s.tokens, s.logprobs, s.lengths, s.stopped, cache, s.logits


def _cache_spec(cache: KVCache, rows: P) -> KVCache:
  """shard_map specs of a cache: every leaf split by rows, the write index replicated."""
  return KVCache(k=(rows,) * len(cache.k), v=(rows,) * len(cache.v), mask=rows, pos=rows,
                 index=P())


def _sample_sharded(graphdef, params, cache, logits, keys, active, limits, *, sp: SamplingParams,
                    ids: SpecialIds, plan: tuple[tuple[int, int], ...], mesh: Mesh):
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
  loop = functools.partial(_sample_loop, graphdef, sp=sp, ids=ids, plan=plan, axis=DATA_AXIS,
                           whole_vocab=split)
  manual = {DATA_AXIS} if split else set(mesh.axis_names)
  return jax.shard_map(
      loop, mesh=mesh, in_specs=(P(), cspec, rows, rows, rows, rows),
      out_specs=(rows, rows, rows, rows, cspec, rows), axis_names=manual)(
          params, cache, logits, keys, active, limits)


def window_plan(used: int, steps: int, size: int, granularity: int
                ) -> tuple[tuple[int, int], ...]:
  """Segments (end_step, window) for ``steps`` decode steps from ``used`` slots.

  Windows grow in multiples of ``granularity`` (0: one segment over the whole
  cache), so the number of distinct compiled plans stays small: the plan only
  depends on ``used`` rounded up to the granularity.
  """
  if not granularity:
    return ((steps, size),)
  base = -(-used // granularity) * granularity
  plan = []
  for end in range(granularity, steps + granularity, granularity):
    end = min(end, steps)
    window = min(size, base + end)
    if plan and plan[-1][1] == window:
      plan[-1] = (end, window)
    else:
      plan.append((end, window))
  return tuple(plan)


def _gather(cache, logits, rows, *, compact: bool = False):
  cache = cache.gather(rows)
  return cache.compact() if compact else cache, jnp.take(logits, rows, axis=0)


_GATHER = jax.jit(_gather, static_argnames=("compact",))


# ----------------------------------------------------------------------------
# The core
# ----------------------------------------------------------------------------
class CachedModel:
  """A model bound to a mesh, with the compiled prefill / extend / gather over its
  KV cache. Head-agnostic: :class:`SamplingCore` (LM head) adds sampling, and the
  PRM's :class:`~ttc_jax.verifiers.incremental.IncrementalScorer` (value head)
  reads scores from the same states.

  Rows are sharded over the mesh axis ``'data'``, parameters and caches over
  ``'model'`` (:mod:`ttc_jax.models.sharding`); a batch that does not divide the data
  axis is padded with rows that are never read.
  """

  def __init__(self, model: Transformer, mesh: Mesh | None = None, pad_id: int = 0,
               window_granularity: int = 32):
    self.config = model.config
    if not 0 <= pad_id < self.config.vocab_size:
      raise ValueError(f"pad_id={pad_id} is outside the model vocab [0, {self.config.vocab_size}).")
    if window_granularity < 0:
      raise ValueError(f"window_granularity={window_granularity} must be >= 0 (0: off).")
    self.pad_id = pad_id
    self.window_granularity = window_granularity
    self.mesh = mesh if mesh is not None else local_mesh()
    self.graphdef, params = nnx.split(model)
    self._rows = NamedSharding(self.mesh, P(DATA_AXIS))
    self.params = jax.device_put(params, sharding.param_shardings(params, self.config,
                                                                  self.mesh))
    model_shards = self.mesh.shape[MODEL_AXIS]
    self._kv = (NamedSharding(self.mesh, sharding.cache_spec(self.config, model_shards))
                if model_shards > 1 else None)
    self._prefill = functools.partial(
        jax.jit(_prefill, static_argnums=(0,), static_argnames=("cache_size", "window", "kv")),
        kv=self._kv)
    self._extend = functools.partial(
        jax.jit(_extend, static_argnums=(0,), static_argnames=("window", "per_token", "kv"),
                donate_argnums=(2, 3)), kv=self._kv)
    self._gather = _GATHER  # shared: a policy and a PRM of one shape compile it once

  # ---------------------------------------------------------------- helpers
  @property
  def data_size(self) -> int:
    return self.mesh.shape[DATA_AXIS]

  def _padded(self, n: int) -> int:
    d = self.data_size
    return -(-n // d) * d

  def _put_rows(self, x):
    return jax.device_put(x, self._rows)

  def _pad_rows(self, x: np.ndarray, n: int, fill) -> np.ndarray:
    if x.shape[0] == n:
      return x
    pad = np.full((n - x.shape[0],) + x.shape[1:], fill, dtype=x.dtype)
    return np.concatenate([x, pad], axis=0)

  def put_rows(self, x, fill) -> Array:
    """Host rows ``x`` (rows first), padded with ``fill`` to a multiple of the 'data'
    axis and split over it (a full pass over a batch of rows, e.g. a PRM's)."""
    x = np.asarray(x)
    return self._put_rows(self._pad_rows(x, self._padded(x.shape[0]), fill))

  def _check_room(self, state: DecodeState, n: int) -> int:
    """Slots used so far (a host sync on the state's index); errors if n more do not fit."""
    used = int(state.cache.index)
    if used + n > state.cache.size:
      raise ValueError(
          f"the KV cache has {state.cache.size} slots and {used} are used; {n} more do not "
          "fit. Prefill with a larger cache_size.")
    return used

  # ------------------------------------------------------------------- API
  def prefill(self, tokens, valid=None, *, cache_size: int) -> DecodeState:
    """Encodes prompts (B, L) (left or right padded, ``valid`` marks real tokens).

    ``cache_size`` slots are allocated: the prompt plus every token that will
    be generated or fed from this state on (tree search needs the total).
    Slots are storage, not context: all rows write at one shared index, so a
    row that adds fewer tokens than the longest leaves masked holes, and a
    cache may have more slots than ``max_seq_len``. The context is per row: no
    row's prompt may exceed ``max_seq_len`` tokens, and sampling stops a row
    at ``max_seq_len`` (its RoPE position), whatever the cache size.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
      raise ValueError(f"tokens must be a non-empty (batch, length) array; got shape {tokens.shape}.")
    b, length = tokens.shape
    valid = np.ones_like(tokens, bool) if valid is None else np.asarray(valid, bool)
    if valid.shape != tokens.shape:
      raise ValueError(f"valid has shape {valid.shape}; tokens has {tokens.shape}.")
    longest = int(valid.sum(1).max())
    if longest > self.config.max_seq_len:
      raise ValueError(
          f"a prompt of {longest} tokens exceeds the model context "
          f"max_seq_len={self.config.max_seq_len}.")
    if length > cache_size:
      raise ValueError(
          f"prompts of length {length} (longest row: {longest} tokens) do not fit "
          f"cache_size={cache_size}.")
    if tokens.min() < 0 or tokens.max() >= self.config.vocab_size:
      raise ValueError(
          f"token ids must lie in [0, {self.config.vocab_size}); got range "
          f"[{tokens.min()}, {tokens.max()}].")
    bp = self._padded(b)
    tok = self._put_rows(self._pad_rows(tokens.astype(np.int32), bp, self.pad_id))
    val = self._put_rows(self._pad_rows(valid, bp, False))
    window = window_plan(0, length, cache_size, self.window_granularity)[-1][1]
    cache, logits = self._prefill(self.graphdef, self.params, tok, val, cache_size=cache_size,
                                  window=window)
    return DecodeState(cache=cache, logits=logits, num_rows=b)

  def extend(self, state: DecodeState, tokens, valid=None) -> DecodeState:
    """Feeds given tokens (B, T) after each row (teacher forcing: a revision prompt
    appended to an answer, or a sampled step fed to the PRM). Donates ``state``."""
    return self._extend_impl(state, tokens, valid, per_token=False)[0]

  def extend_outputs(self, state: DecodeState, tokens, valid=None
                     ) -> tuple[DecodeState, Array]:
    """Like :meth:`extend`; also returns the head output at every new token,
    (padded rows, T, V) logits or (padded rows, T) values."""
    return self._extend_impl(state, tokens, valid, per_token=True)

  def _extend_impl(self, state: DecodeState, tokens, valid, *, per_token: bool):
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be a (batch, length) array; got shape {tokens.shape}.")
    b, t = tokens.shape
    if b != state.num_rows:
      raise ValueError(f"extend got {b} rows for a state of {state.num_rows} rows.")
    valid = np.ones_like(tokens, bool) if valid is None else np.asarray(valid, bool)
    if valid.shape != tokens.shape:
      raise ValueError(f"valid has shape {valid.shape}; tokens has {tokens.shape}.")
    used = self._check_room(state, t)
    window = window_plan(used, t, state.cache.size, self.window_granularity)[-1][1]
    bp = state.padded_rows
    tok = self._put_rows(self._pad_rows(tokens, bp, self.pad_id))
    val = self._put_rows(self._pad_rows(valid, bp, False))
    cache, logits, every = self._extend(self.graphdef, self.params, state.cache, state.logits,
                                        tok, val, window=window, per_token=per_token)
    return DecodeState(cache=cache, logits=logits, num_rows=state.num_rows), every

  def reset_rows(self, state: DecodeState, rows) -> DecodeState:
    """Empties the cache of ``rows`` (a (num_rows,) bool mask): their slots are masked
    and their next token gets RoPE position 0, so what is fed to them next is encoded
    as a fresh prompt (an adapted PRM re-scoring a row in full). Donates ``state``."""
    rows = np.asarray(rows, bool)
    if rows.shape != (state.num_rows,):
      raise ValueError(f"rows must be a ({state.num_rows},) bool mask; got shape {rows.shape}.")
    mask = self._put_rows(self._pad_rows(rows, state.padded_rows, False))
    return DecodeState(cache=_RESET_ROWS(state.cache, mask), logits=state.logits,
                       num_rows=state.num_rows)

  def grow(self, state: DecodeState, size: int) -> DecodeState:
    """The state with a cache of ``size`` slots (>= its current size; new slots empty)."""
    if size < state.cache.size:
      raise ValueError(f"grow to {size} slots: the cache already has {state.cache.size}.")
    cache = state.cache.resized(size)
    if self._kv is not None:
      put = lambda x: jax.device_put(x, self._kv)
      cache = cache.replace(k=tuple(map(put, cache.k)), v=tuple(map(put, cache.v)))
    return DecodeState(cache=cache, logits=state.logits, num_rows=state.num_rows)

  def gather(self, state: DecodeState, rows, compact: bool = False) -> DecodeState:
    """Re-selects rows of ``state`` (tree expansion): new row i = old row rows[i].

    compact: also reclaim the cache slots left empty by rows that generated
    fewer tokens than the longest (see ``KVCache.compact``).
    """
    rows = np.asarray(rows, np.int32)
    if rows.ndim != 1 or rows.size == 0:
      raise ValueError(f"rows must be a non-empty 1-D index array; got shape {rows.shape}.")
    if rows.min() < 0 or rows.max() >= state.num_rows:
      raise ValueError(f"rows must lie in [0, {state.num_rows}); got [{rows.min()}, {rows.max()}].")
    n = rows.size
    idx = self._put_rows(self._pad_rows(rows, self._padded(n), rows[0]))
    cache, logits = self._gather(state.cache, state.logits, idx, compact=compact)
    return DecodeState(cache=cache, logits=logits, num_rows=n)


def _reset_rows(cache: KVCache, rows: Array) -> KVCache:
  return cache.replace(mask=cache.mask & ~rows[:, None], pos=jnp.where(rows, 0, cache.pos))


_RESET_ROWS = jax.jit(_reset_rows, donate_argnums=(0,))


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
                           static_argnames=("sp", "ids", "plan", "mesh"), donate_argnums=(2, 3))

  def sample(self, state: DecodeState, keys: Array, sp: SamplingParams,
             active=None, limits=None) -> SampleOutput:
    """Samples up to ``sp.max_new_tokens`` per row, continuing from ``state``.

    keys: (num_rows,) typed PRNG keys (see :func:`row_keys`); ignored if greedy.
    active: optional (num_rows,) bool; inactive rows generate nothing.
    limits: optional (num_rows,) ints in [0, max_new_tokens]: row i generates at
      most ``limits[i]`` tokens (a per-solution token cap). Whatever the limits,
      no row goes past the model context (``max_seq_len`` tokens).
    A row that reaches its limit or the context is done but not ``stopped``.
    ``state`` is donated; continue from ``output.state``.
    """
    if not isinstance(sp, SamplingParams):
      raise TypeError(f"sp must be SamplingParams, got {type(sp).__name__}.")
    b, bp = state.num_rows, state.padded_rows
    keys = jnp.asarray(keys)
    if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) or keys.shape != (b,):
      raise ValueError(
          f"keys must be typed PRNG keys of shape ({b},) (see row_keys); got "
          f"{keys.dtype}{tuple(keys.shape)}.")
    used = self._check_room(state, sp.max_new_tokens)
    plan = window_plan(used, sp.max_new_tokens, state.cache.size, self.window_granularity)
    act = np.ones((b,), bool) if active is None else np.asarray(active, bool)
    if act.shape != (b,):
      raise ValueError(f"active has shape {act.shape}; expected ({b},).")
    act = self._put_rows(self._pad_rows(act, bp, False))
    lim = (np.full((b,), sp.max_new_tokens, np.int32) if limits is None
           else np.asarray(limits, np.int32))
    if lim.shape != (b,) or lim.min() < 0 or lim.max() > sp.max_new_tokens:
      raise ValueError(f"limits must be ({b},) integers in [0, max_new_tokens="
                       f"{sp.max_new_tokens}]; got shape {lim.shape}, range "
                       f"[{lim.min()}, {lim.max()}].")
    lim = self._put_rows(self._pad_rows(lim, bp, 0))
    if bp != b:
      keys = jnp.concatenate([keys, jnp.broadcast_to(keys[:1], (bp - b,))])
    keys = self._put_rows(keys)
    tokens, logprobs, lengths, stopped, cache, logits = self._sample(
        self.graphdef, self.params, state.cache, state.logits, keys, act, lim, sp=sp,
        ids=self.ids, plan=plan, mesh=self.mesh)
    if bp != b:
      tokens, logprobs, lengths, stopped = (x[:b] for x in (tokens, logprobs, lengths, stopped))
    return SampleOutput(tokens=tokens, logprobs=logprobs, lengths=lengths, stopped=stopped,
                        state=DecodeState(cache=cache, logits=logits, num_rows=b))

  def generate(self, tokens, valid, keys, sp: SamplingParams, *, limits=None) -> SampleOutput:
    """Prefill + sample in one call; the cache holds the prompts and max_new_tokens.

    Every row must have room for ``max_new_tokens`` within the context (an
    error otherwise, never a silent cut); ``limits`` as in :meth:`sample`.
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
    return self.sample(state, keys, sp, limits=limits)
