"""Incremental verifier scoring: the PRM keeps its own KV cache during search.

Scoring a new step is "extend the PRM cache by the step's tokens and read the
value at the step's last token", so every token of a search tree goes through
the PRM exactly once (prompts included), and selecting rows of the frontier is a
gather over the batch axis of the PRM cache, just as for the policy.

Shapes are fixed: rows that add nothing in a call pass an all-False ``valid``
row and keep their previous score.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax import struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ttc_jax.models.transformer import KVCache
from ttc_jax.models.transformer import Transformer
from ttc_jax.sampling.core import DATA_AXIS
from ttc_jax.sampling.core import make_mesh
from ttc_jax.sampling.core import window_plan


@struct.dataclass
class VerifierState:
  """The PRM's cache and each row's latest score (sigmoid of the value head)."""

  cache: KVCache
  scores: jax.Array  # (B,) float32
  num_rows: int = struct.field(pytree_node=False, default=-1)

  @property
  def padded_rows(self) -> int:
    return self.scores.shape[0]


def _prefill(graphdef, params, tokens, valid, *, cache_size: int, window: int):
  model: Transformer = nnx.merge(graphdef, params)
  cache = KVCache.empty(model.config, tokens.shape[0], window)
  values, cache = model(tokens, valid, cache, readout="last")
  return cache.resized(cache_size), jax.nn.sigmoid(values.astype(jnp.float32))


def _extend(graphdef, params, cache, scores, tokens, valid, *, window: int):
  """Returns the cache, each row's latest score and the score at every new token."""
  model: Transformer = nnx.merge(graphdef, params)
  size = cache.size
  values, cache = model(tokens, valid, cache.resized(window), readout="all")
  per_token = jax.nn.sigmoid(values.astype(jnp.float32))  # (B, T)
  t = tokens.shape[1]
  last = jnp.max(jnp.where(valid, jnp.arange(t)[None], -1), axis=1)
  latest = jnp.take_along_axis(per_token, jnp.maximum(last, 0)[:, None], axis=1)[:, 0]
  return cache.resized(size), jnp.where(last >= 0, latest, scores), per_token


def _gather(cache, scores, rows, *, compact: bool = False):
  cache = cache.gather(rows)
  return cache.compact() if compact else cache, jnp.take(scores, rows, axis=0)


class IncrementalScorer:
  """A value-head model bound to a mesh, with jitted prefill / extend / gather."""

  def __init__(self, model: Transformer, mesh=None, pad_id: int = 0,
               window_granularity: int = 32):
    if model.config.head != "value":
      raise ValueError(f"a verifier needs a value-head model; got head={model.config.head!r}.")
    self.config = model.config
    self.pad_id = pad_id
    self.window_granularity = window_granularity
    self.mesh = make_mesh(devices=jax.devices()[:1]) if mesh is None else mesh
    self.graphdef, params = nnx.split(model)
    self.params = jax.device_put(params, NamedSharding(self.mesh, P()))
    self._rows = NamedSharding(self.mesh, P(DATA_AXIS))
    self._prefill = jax.jit(_prefill, static_argnums=(0,), static_argnames=("cache_size", "window"))
    self._extend = jax.jit(_extend, static_argnums=(0,), static_argnames=("window",),
                           donate_argnums=(2, 3))
    self._gather = jax.jit(_gather, static_argnames=("compact",))

  def _padded(self, n: int) -> int:
    d = self.mesh.shape[DATA_AXIS]
    return -(-n // d) * d

  def _put(self, x: np.ndarray, n: int, fill) -> jax.Array:
    if x.shape[0] != n:
      x = np.concatenate([x, np.full((n - x.shape[0],) + x.shape[1:], fill, x.dtype)])
    return jax.device_put(x, self._rows)

  def prefill(self, tokens, valid, *, cache_size: int) -> VerifierState:
    """Encodes prompts (B, L); ``scores`` are the values at each prompt's last token."""
    tokens = np.asarray(tokens, np.int32)
    valid = np.asarray(valid, bool)
    if cache_size > self.config.max_seq_len or tokens.shape[1] > cache_size:
      raise ValueError(f"prompt length {tokens.shape[1]} / cache_size {cache_size} must be <= "
                       f"max_seq_len={self.config.max_seq_len} (and prompt <= cache).")
    b = tokens.shape[0]
    bp = self._padded(b)
    window = window_plan(0, tokens.shape[1], cache_size, self.window_granularity)[-1][1]
    cache, scores = self._prefill(self.graphdef, self.params, self._put(tokens, bp, self.pad_id),
                                  self._put(valid, bp, False), cache_size=cache_size,
                                  window=window)
    return VerifierState(cache=cache, scores=scores, num_rows=b)

  def extend(self, state: VerifierState, tokens, valid) -> VerifierState:
    """Feeds each row's new tokens (B, T); donates ``state``."""
    return self._extend_impl(state, tokens, valid)[0]

  def extend_scores(self, state: VerifierState, tokens, valid
                    ) -> tuple[VerifierState, np.ndarray]:
    """Like :meth:`extend`; also returns the (num_rows, T) scores at every new token."""
    state, per_token = self._extend_impl(state, tokens, valid)
    return state, np.asarray(per_token)[:state.num_rows]

  def _extend_impl(self, state: VerifierState, tokens, valid):
    tokens = np.asarray(tokens, np.int32)
    valid = np.asarray(valid, bool)
    if tokens.shape[0] != state.num_rows or valid.shape != tokens.shape:
      raise ValueError(f"extend got tokens {tokens.shape} / valid {valid.shape} for "
                       f"{state.num_rows} rows.")
    used = int(state.cache.index)
    t = tokens.shape[1]
    if used + t > state.cache.size:
      raise ValueError(f"the verifier cache has {state.cache.size} slots, {used} used; {t} more "
                       "do not fit.")
    window = window_plan(used, t, state.cache.size, self.window_granularity)[-1][1]
    bp = state.padded_rows
    cache, scores, per_token = self._extend(
        self.graphdef, self.params, state.cache, state.scores,
        self._put(tokens, bp, self.pad_id), self._put(valid, bp, False), window=window)
    return VerifierState(cache=cache, scores=scores, num_rows=state.num_rows), per_token

  def gather(self, state: VerifierState, rows, compact: bool = False) -> VerifierState:
    """Re-selects rows (new row i = old row rows[i]); ``compact`` reclaims empty slots."""
    rows = np.asarray(rows, np.int32)
    if rows.ndim != 1 or rows.size == 0 or rows.min() < 0 or rows.max() >= state.num_rows:
      raise ValueError(f"rows must be a non-empty 1-D array in [0, {state.num_rows}).")
    n = rows.size
    idx = self._put(rows, self._padded(n), rows[0])
    cache, scores = self._gather(state.cache, state.scores, idx, compact=compact)
    return VerifierState(cache=cache, scores=scores, num_rows=n)

  def scores(self, state: VerifierState) -> np.ndarray:
    return np.asarray(state.scores)[:state.num_rows]
