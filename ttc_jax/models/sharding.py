"""Tensor parallelism: how the decoder's parameters and KV cache lie over the 'model' axis.

Megatron-style: within a layer, the query heads, the key/value heads and the MLP hidden
units are split over ``'model'`` (column-parallel q/k/v and gate/up, row-parallel output
and down projections: one all-reduce after each sublayer), and so is the LM head's
vocabulary. Each shard holds whole heads: query heads must divide evenly; key/value heads
are split when they divide evenly and replicated otherwise (a 2-KV-head model on 4 shards
keeps both on every shard, as grouped-query attention needs). Embeddings, norms and the
value head are replicated. The KV cache follows the key/value heads. Rows are split over
``'data'`` by the callers (the sampling core, the trainer).

:func:`param_spec` is the single rule; :mod:`ttc_jax.models.memory` counts bytes with it
and the checkpoint loaders place each tensor with it.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ttc_jax.models.transformer import TransformerConfig
from ttc_jax.parallel import DATA_AXIS
from ttc_jax.parallel import MODEL_AXIS


def check(config: TransformerConfig, model_shards: int) -> None:
  """Raises ValueError if ``config`` cannot be split over ``model_shards`` 'model' shards."""
  if model_shards < 1:
    raise ValueError(f"model_shards={model_shards}: expected >= 1.")
  if model_shards == 1:
    return
  for name, n in (("num_heads", config.num_heads), ("mlp_dim", config.mlp_dim)):
    if n % model_shards:
      raise ValueError(f"{name}={n} does not split over a 'model' axis of {model_shards} "
                       f"shards: use a number of shards that divides it.")


def kv_split(config: TransformerConfig, model_shards: int) -> bool:
  """Whether the key/value heads are split over 'model' (else replicated)."""
  return model_shards > 1 and config.kv_heads % model_shards == 0


def param_spec(path: tuple, config: TransformerConfig, model_shards: int) -> P:
  """The PartitionSpec of the parameter at ``path`` (``nnx.to_pure_dict`` keys)."""
  if model_shards == 1:
    return P()
  name = path[-1]
  if name in ("q", "q_bias") or (name in ("k", "v", "k_bias", "v_bias")
                                 and kv_split(config, model_shards)):
    return P(MODEL_AXIS) if name.endswith("_bias") else P(None, MODEL_AXIS)
  if name in ("gate", "up"):
    return P(None, MODEL_AXIS)
  if name in ("out", "down"):
    return P(MODEL_AXIS, None)
  if name == "lm_head" and config.vocab_size % model_shards == 0:
    return P(None, MODEL_AXIS)
  return P()


def param_path(keypath) -> tuple:
  """A pytree key path of a model's state (or its ``nnx.to_pure_dict``) as a plain tuple
  of names and layer indices, e.g. ``('layers', 0, 'attn', 'q')``."""
  out = []
  for k in keypath:
    if isinstance(k, jax.tree_util.DictKey):
      out.append(k.key)
    elif isinstance(k, jax.tree_util.SequenceKey):
      out.append(k.idx)
    # GetAttrKey('value'): inside an nnx.Variable, not part of the name
  return tuple(out)


def param_shardings(state: nnx.State, config: TransformerConfig, mesh: Mesh):
  """A NamedSharding per leaf of ``state`` (a model's params) on ``mesh``."""
  m = mesh.shape[MODEL_AXIS]
  check(config, m)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: NamedSharding(mesh, param_spec(param_path(path), config, m)),
      state)


def cache_spec(config: TransformerConfig, model_shards: int) -> P:
  """The PartitionSpec of a KV cache's keys (B, KV heads, head_dim, S) and values (B, KV heads, S,
  head_dim): rows over 'data', KV heads over 'model' where they divide."""
  return P(DATA_AXIS, MODEL_AXIS if kv_split(config, model_shards) else None)
