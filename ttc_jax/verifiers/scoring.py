"""PRM / ORM scoring of whole solutions, and step-score aggregation.

A verifier is the decoder with a value head; its score at a token is
``sigmoid(value)``. A solution's step scores are read at each step's last token
(the step delimiter, or EOS for the final step) -- the same tokens it was
trained on (``training.data.value_dataset``). ORM scores are read at the last
token. (Search scores steps incrementally from the verifier's own KV cache; this
module scores finished solutions in one batched forward pass.)
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ttc_jax import parallel
from ttc_jax.models import sharding
from ttc_jax.models.transformer import HEAD_CHUNK
from ttc_jax.models.transformer import Transformer
from ttc_jax.parallel import DATA_AXIS
from ttc_jax.progress import Progress
from ttc_jax.sampling import confidence as confidence_lib
from ttc_jax.sampling.solutions import round_up
from ttc_jax.verifiers.batching import map_by_length

STEP_AGGREGATIONS = ("last", "min", "prod")


def aggregate_steps(step_scores: Sequence[np.ndarray], how: str) -> np.ndarray:
  """One score per solution from its step scores: 'last', 'min' or 'prod'. NaN marks a
  span that is not a step (an adapted PRM's EOS alone) and is skipped.

  A solution without steps scores 0.
  """
  if how not in STEP_AGGREGATIONS:
    raise ValueError(f"step aggregation {how!r}: expected one of {STEP_AGGREGATIONS}.")
  fn = {"last": lambda s: s[-1], "min": np.min, "prod": np.prod}[how]
  out = []
  for s in step_scores:
    s = np.asarray(s, np.float64)
    s = s[~np.isnan(s)]
    out.append(float(fn(s)) if len(s) else 0.0)
  return np.array(out, np.float64)


def _values(graphdef, params, tokens, valid):
  model: Transformer = nnx.merge(graphdef, params)
  values, _ = model(tokens, valid)
  return jax.nn.sigmoid(values.astype(jnp.float32))


def _token_stats(graphdef, params, tokens, valid):
  """(rows, length, 3) per position t under an LM: log p(x_t | x_<t), then the confidence of
  the distribution x_t was drawn from (:func:`ttc_jax.sampling.confidence.token_confidence`,
  as the sampling core computes it); zeros at t = 0. The LM head is applied HEAD_CHUNK
  (ttc_jax.models.transformer) positions at a time: no (rows, length, vocabulary) array is
  built (4 rows of 4096 tokens over Qwen's 152k vocabulary would be 9 GiB of float32)."""
  model: Transformer = nnx.merge(graphdef, params)
  hidden, _ = model(tokens, valid, readout="hidden")
  b, t = tokens.shape
  chunk = HEAD_CHUNK
  n = -(-t // chunk)
  pad = n * chunk - t
  # Position i predicts token i + 1 (the last position predicts nothing: a pad target).
  targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, pad + 1)))
  hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
  chunks = lambda x: jnp.moveaxis(x.reshape((b, n, chunk) + x.shape[2:]), 1, 0)

  def stats(args):
    h, target = args
    lp = jax.nn.log_softmax(model.apply_head(h).astype(jnp.float32), axis=-1)
    token = jnp.take_along_axis(lp, target[..., None], axis=-1)
    return jnp.concatenate([token, confidence_lib.token_confidence(lp)], axis=-1)

  nxt = jnp.moveaxis(jax.lax.map(stats, (chunks(hidden), chunks(targets))), 0, 1)
  nxt = nxt.reshape(b, n * chunk, nxt.shape[-1])[:, :t - 1]
  return jnp.concatenate([jnp.zeros_like(nxt[:, :1]), nxt], axis=1)


LENGTH_MULTIPLE = 32  # a scoring call's padded length is a multiple of this


class Scorer:
  """Batched scoring on a mesh (rows sharded over 'data', params laid out over 'model' by
  :mod:`ttc_jax.models.sharding`): a
  value-head verifier's sigmoid(value) at each token, or for an LM head the
  probability of each token given its prefix (the policy's own likelihood)."""

  def __init__(self, model: Transformer, mesh=None, pad_id: int = 0):
    if model.config.head not in ("value", "lm"):
      raise ValueError(f"a scorer needs a value or LM head; got head={model.config.head!r}.")
    self.config = model.config
    self.mesh = parallel.local_mesh() if mesh is None else mesh
    self.pad_id = pad_id
    graphdef, params = nnx.split(model)
    self._graphdef = graphdef
    self._params = jax.device_put(params, sharding.param_shardings(params, self.config,
                                                                   self.mesh))
    self._rows = NamedSharding(self.mesh, P(DATA_AXIS))
    self._fn = jax.jit(_values if model.config.head == "value" else _token_stats,
                       static_argnums=(0,))

  def token_scores(self, rows: Sequence[Sequence[int]], *, batch_size: int,
                   desc: str = "scoring", log_fn: Callable[[str], None] | None = None
                   ) -> list[np.ndarray]:
    """sigmoid(value) at every token of each row (rows: token lists, BOS first); for an LM
    head, p(x_t | x_<t) (1 at t = 0)."""
    out = self._per_token(rows, batch_size=batch_size, desc=desc, log_fn=log_fn)
    return out if self.config.head == "value" else [np.exp(x[:, 0]) for x in out]

  def token_confidence(self, rows: Sequence[Sequence[int]], *, batch_size: int,
                       desc: str = "confidence", log_fn: Callable[[str], None] | None = None
                       ) -> list[np.ndarray]:
    """An LM's (length, 3) per token of each row: log p(x_t | x_<t) and the confidence of the
    distribution it came from (what the sampling core returns for the tokens it samples;
    zeros at t = 0)."""
    if self.config.head != "lm":
      raise ValueError(f"token confidence needs an LM head; this scorer has {self.config.head!r}.")
    return self._per_token(rows, batch_size=batch_size, desc=desc, log_fn=log_fn)

  def _per_token(self, rows: Sequence[Sequence[int]], *, batch_size: int, desc: str,
                 log_fn: Callable[[str], None] | None) -> list[np.ndarray]:
    """The jitted function's output at every token of each row (rows: token lists)."""
    n = len(rows)
    data = self.mesh.shape[DATA_AXIS]
    batch_size = round_up(batch_size, data)
    longest = max(len(r) for r in rows)
    if longest > self.config.max_seq_len:
      raise ValueError(f"a row of {longest} tokens exceeds max_seq_len={self.config.max_seq_len}.")
    kwargs = {} if log_fn is None else {"log_fn": log_fn}
    progress = Progress(n, desc, unit="rows", **kwargs)

    def run(chunk: np.ndarray) -> list[np.ndarray]:
      # Rows of similar length (map_by_length), padded to the chunk's own longest row
      # (rounded up to LENGTH_MULTIPLE: few compiled shapes).
      length = min(round_up(max(len(rows[i]) for i in chunk), LENGTH_MULTIPLE),
                   self.config.max_seq_len)
      tokens = np.full((batch_size, length), self.pad_id, np.int32)
      valid = np.zeros((batch_size, length), bool)
      for j, i in enumerate(chunk):
        tokens[j, :len(rows[i])] = rows[i]
        valid[j, :len(rows[i])] = True
      vals = np.asarray(self._fn(self._graphdef, self._params, jax.device_put(tokens, self._rows),
                                 jax.device_put(valid, self._rows)))
      progress.update(len(chunk) * parallel.process_count())
      return [vals[j, :len(rows[i])] for j, i in enumerate(chunk)]

    return map_by_length([len(r) for r in rows], batch_size, run)

  def step_scores(self, rows: Sequence[Sequence[int]], step_ends: Sequence[Sequence[int]], *,
                  batch_size: int, log_fn=None) -> list[np.ndarray]:
    """Scores at each step's last token; ``step_ends[i]`` index into ``rows[i]``."""
    if len(rows) != len(step_ends):
      raise ValueError(f"{len(rows)} rows but {len(step_ends)} step_ends lists.")
    per_token = self.token_scores(rows, batch_size=batch_size, log_fn=log_fn)
    return [t[np.asarray(e, np.int64)] for t, e in zip(per_token, step_ends)]
