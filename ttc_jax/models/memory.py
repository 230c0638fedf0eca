"""Memory per device of a run, checked before it starts.

A run holds, on each device: its share of every model's parameters and of the KV caches
of the rows it decodes, plus the next-token logits of those rows. With a mesh of
``data`` x ``model`` devices, rows are split over 'data'; parameters and caches over
'model' as :mod:`ttc_jax.models.sharding` lays them out (query heads, key/value heads
when they divide evenly, MLP hidden units and the LM head's vocabulary split; embeddings
and norms replicated). A search that copies its caches (the
lookahead rollouts) counts them twice.

Full forward passes over whole rows (a verifier scoring finished samples, the policy's
likelihood) hold no cache but one layer's temporaries at a time: its attention scores
(rows x query heads x length^2, float32) and hidden states, and for an LM head read at
every position one chunk of logits. They run in other stages than the cached decoding, one
model at a time, so a plan holds the parameters plus the largest of these.

The estimate is a lower bound on what XLA allocates (other temporaries come on top), so
:func:`check` keeps a margin: by default the plan must fit in 90% of the device's memory.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from ttc_jax.models import sharding
from ttc_jax.models.transformer import HEAD_CHUNK
from ttc_jax.models.transformer import Transformer
from ttc_jax.models.transformer import TransformerConfig
from ttc_jax.parallel import MODEL_AXIS

GIB = 1024 ** 3


class OutOfMemoryPlan(ValueError):
  """A run's planned memory per device exceeds what the device has."""


def _bytes(dtype: str) -> int:
  return np.dtype(jax.numpy.dtype(dtype)).itemsize


def param_bytes(config: TransformerConfig, model_shards: int = 1) -> float:
  """Bytes of ``config``'s parameters on one device of a 'model' axis of ``model_shards``
  (laid out as :mod:`ttc_jax.models.sharding` places them)."""
  sharding.check(config, model_shards)
  shapes = nnx.state(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))), nnx.Param)
  total = 0.0
  for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
    spec = sharding.param_spec(sharding.param_path(path), config, model_shards)
    split = model_shards if MODEL_AXIS in tuple(spec) else 1
    total += np.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize / split
  return total


def kv_cache_bytes(config: TransformerConfig, rows: int, cache_size: int,
                   data_shards: int = 1, model_shards: int = 1) -> float:
  """Bytes of the KV cache of ``rows`` rows of ``cache_size`` slots on one device."""
  c = config
  heads = c.kv_heads // model_shards if sharding.kv_split(c, model_shards) else c.kv_heads
  per_row = 2 * c.num_layers * heads * cache_size * c.dim_per_head
  per_row = per_row * _bytes(c.dtype) + cache_size + 4  # + the slot mask, the position
  return np.ceil(rows / data_shards) * per_row


def full_pass_bytes(config: TransformerConfig, rows: int, length: int, data_shards: int = 1,
                    model_shards: int = 1) -> float:
  """Bytes of one layer's temporaries in a full forward pass of ``rows`` rows of
  ``length`` tokens on one device: float32 attention scores of the device's query heads
  and the hidden states (residual, attention output, the MLP's hidden units); for an LM
  head read at every position, one chunk of :data:`HEAD_CHUNK` positions' logits and
  their log-softmax (the whole vocabulary: an upper bound where it is split)."""
  c = config
  sharding.check(c, model_shards)
  scores = (c.num_heads // model_shards) * length * length * 4
  hidden = length * (3 * c.d_model + 2 * c.mlp_dim // model_shards) * 4
  head = 2 * min(HEAD_CHUNK, length) * c.vocab_size * 4 if c.head == "lm" else 0
  return np.ceil(rows / data_shards) * (scores + hidden + head)


@dataclasses.dataclass(frozen=True)
class Use:
  """One model in a run: its config, the rows it holds caches for and their slots;
  ``copies`` of the caches at once (2 for lookahead's rollout copies); the rows of a full
  forward pass over whole rows of ``cache_size`` tokens at once (0: none)."""

  name: str
  config: TransformerConfig
  rows: int
  cache_size: int
  copies: int = 1
  full_pass_rows: int = 0


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Bytes per device, by part: parameters (always held), the decoding parts (KV caches,
  logits) and the full-pass parts (in other stages: the larger of the two counts)."""

  parts: tuple[tuple[str, float], ...]
  full_pass: tuple[tuple[str, float], ...] = ()

  @property
  def total(self) -> float:
    held = sum(b for name, b in self.parts if name.endswith("parameters"))
    decode = sum(b for name, b in self.parts if not name.endswith("parameters"))
    # Full passes run one model at a time (the policy's likelihood, then the verifiers).
    return held + max([decode] + [b for _, b in self.full_pass])

  def describe(self) -> str:
    out = ", ".join(f"{name} {b / GIB:.2f} GiB" for name, b in self.parts if b)
    if any(b for _, b in self.full_pass):
      out += "; or, in full passes: " + ", ".join(
          f"{name} {b / GIB:.2f} GiB" for name, b in self.full_pass if b)
    return out


def plan(uses: Sequence[Use], *, data_shards: int = 1, model_shards: int = 1) -> MemoryPlan:
  """The memory per device of ``uses`` on a (data_shards x model_shards) mesh."""
  parts, full = [], []
  for u in uses:
    parts.append((f"{u.name} parameters", param_bytes(u.config, model_shards)))
    parts.append((f"{u.name} KV cache", u.copies * kv_cache_bytes(
        u.config, u.rows, u.cache_size, data_shards, model_shards)))
    out = {"lm": u.config.vocab_size, "value": 1,  # whole rows of outputs
           "classifier": u.config.num_labels}[u.config.head]
    parts.append((f"{u.name} logits", np.ceil(u.rows / data_shards) * out * 4 * u.copies))
    if u.full_pass_rows:
      full.append((f"{u.name} full pass", full_pass_bytes(
          u.config, u.full_pass_rows, min(u.cache_size, u.config.max_seq_len), data_shards,
          model_shards)))
  return MemoryPlan(parts=tuple(parts), full_pass=tuple(full))


def device_bytes(device=None) -> int | None:
  """Memory of ``device`` (default: the first local one): the accelerator's limit, or on
  CPU the host's physical memory shared by its local devices; None if unknown."""
  device = device or jax.local_devices()[0]
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    pass
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  if device.platform == "cpu":
    try:
      host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
      return None
    return host // max(1, jax.local_device_count())
  return None


def check(p: MemoryPlan, available: int | None = None, *, fraction: float = 0.9) -> None:
  """Raises :class:`OutOfMemoryPlan` if ``p`` needs more than ``fraction`` of the device's
  memory (``available``: default :func:`device_bytes`; unknown memory is not checked)."""
  available = device_bytes() if available is None else available
  if available is None or p.total <= fraction * available:
    return
  raise OutOfMemoryPlan(
      f"needs {p.total / GIB:.1f} GiB per device ({p.describe()}), {available / GIB:.1f} GiB "
      f"available (the plan must fit {fraction:.0%} of it): lower rows_per_call or the batch "
      "size, or add 'model' shards.")
