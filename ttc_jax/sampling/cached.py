"""A model over its KV cache, whatever its head: prefill, extend, gather and reset rows, on a
('data', 'model') mesh. The sampling core (an LM head) and the PRM's incremental scorer (a value
head) are both :class:`CachedModel` s; :class:`DecodeState` is what generation or scoring
continues from.

Decode is bound by reading the whole cache every step, so the functions here take a static
``window``: the cache cut to the slots a call can reach (:func:`window_plan`).
"""

from __future__ import annotations

import functools
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


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def left_pad(rows: Sequence[Sequence[int]], length: int, pad_id: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """(N, length) int32 tokens left-padded with ``pad_id`` and the (N, length) valid mask."""
  tokens = np.full((len(rows), length), pad_id, np.int32)
  valid = np.zeros((len(rows), length), bool)
  for i, r in enumerate(rows):
    if len(r) > length:
      raise ValueError(f"row {i} has {len(r)} tokens, more than {length}.")
    if len(r):
      tokens[i, length - len(r):] = r
      valid[i, length - len(r):] = True
  return tokens, valid


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


def _gather(cache, logits, rows, *, compact: bool = False, size: int | None = None):
  cache = cache.gather(rows)
  cache = cache.compact() if compact else cache
  return cache if size is None else cache.resized(size), jnp.take(logits, rows, axis=0)


_GATHER = jax.jit(_gather, static_argnames=("compact", "size"))


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

  def insert(self, state: DecodeState, new: DecodeState, rows) -> DecodeState:
    """Rows ``rows`` of ``state`` (distinct) become the rows of ``new`` (a prefill of
    other prompts, ``new.num_rows`` of them): their cache is the new rows' (written at
    the slots just before the write index, every other slot of theirs masked), their next
    logits the new ones (continuous batching: a finished row's slot takes the next
    request); a row -1 drops that new row (a padded batch of new prompts). Needs ``new``'s
    cache size <= the slots written so far. Donates ``state``."""
    rows = np.asarray(rows, np.int32)
    kept = rows[rows >= 0]
    if rows.shape != (new.num_rows,) or len(set(kept.tolist())) != kept.size or (
        rows.size and (rows.min() < -1 or rows.max() >= state.num_rows)):
      raise ValueError(f"rows must be {new.num_rows} distinct rows in [0, {state.num_rows}) "
                       f"or -1 (dropped); got {rows.tolist()}.")
    rows = np.where(rows < 0, state.padded_rows, rows)
    used = int(state.cache.index)
    if new.cache.size > used:
      raise ValueError(f"the new rows' cache has {new.cache.size} slots; only {used} are "
                       "written before the index (prefill the batch at least that wide).")
    idx = self._put_rows(self._pad_rows(rows, new.padded_rows, state.padded_rows))
    cache, logits = _INSERT(state.cache, state.logits, new.cache, new.logits, idx)
    return DecodeState(cache=cache, logits=logits, num_rows=state.num_rows)

  def shift(self, state: DecodeState, shift: int) -> DecodeState:
    """The state with every row's slots moved ``shift`` to the left, or ``-shift`` to the
    right (see ``KVCache.shifted``): the first ``shift`` slots must hold nothing a live row
    reads; a right shift needs that many free slots after the index. Donates ``state``."""
    used = int(state.cache.index)
    if not used - state.cache.size <= shift <= used:
      raise ValueError(f"shift={shift}: expected an integer in [{used - state.cache.size}, "
                       f"{used}] (slots written: {used} of {state.cache.size}).")
    if not shift:
      return state
    cache = _SHIFT(state.cache, jnp.asarray(shift, jnp.int32))
    return DecodeState(cache=cache, logits=state.logits, num_rows=state.num_rows)

  def gather(self, state: DecodeState, rows, compact: bool = False,
             size: int | None = None) -> DecodeState:
    """Re-selects rows of ``state`` (tree expansion): new row i = old row rows[i].

    compact: also reclaim the cache slots left empty by rows that generated
    fewer tokens than the longest (see ``KVCache.compact``).
    size: the new cache's slots (default: as it is; at least the slots written).
    """
    rows = np.asarray(rows, np.int32)
    if rows.ndim != 1 or rows.size == 0:
      raise ValueError(f"rows must be a non-empty 1-D index array; got shape {rows.shape}.")
    if rows.min() < 0 or rows.max() >= state.num_rows:
      raise ValueError(f"rows must lie in [0, {state.num_rows}); got [{rows.min()}, {rows.max()}].")
    if size is not None and (compact or not int(state.cache.index) <= size):
      raise ValueError(f"size={size}: expected no compaction and at least the "
                       f"{int(state.cache.index)} slots written.")
    n = rows.size
    idx = self._put_rows(self._pad_rows(rows, self._padded(n), rows[0]))
    cache, logits = self._gather(state.cache, state.logits, idx, compact=compact,
                                 size=None if size == state.cache.size else size)
    return DecodeState(cache=cache, logits=logits, num_rows=n)


def _insert(cache: KVCache, logits: Array, new: KVCache, new_logits: Array, rows: Array):
  return cache.inserted(rows, new), logits.at[rows].set(new_logits, mode="drop")


def _shift(cache: KVCache, shift: Array) -> KVCache:
  return cache.shifted(shift)


_INSERT = jax.jit(_insert, donate_argnums=(0, 1))
_SHIFT = jax.jit(_shift, donate_argnums=(0,))


def _reset_rows(cache: KVCache, rows: Array) -> KVCache:
  return cache.replace(mask=cache.mask & ~rows[:, None], pos=jnp.where(rows, 0, cache.pos))


_RESET_ROWS = jax.jit(_reset_rows, donate_argnums=(0,))
