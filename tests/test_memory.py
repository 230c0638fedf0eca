"""The memory planner against the arrays it predicts."""

import dataclasses

import jax
import pytest

from ttc_jax.models import memory
from ttc_jax.models.transformer import KVCache
from ttc_jax.models.transformer import TransformerConfig

BASE = TransformerConfig(vocab_size=96, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2,
                         mlp_dim=64, max_seq_len=64)


@pytest.mark.parametrize("kwargs", [
    dict(), dict(tie_embeddings=True), dict(head="value"), dict(qkv_bias=True, post_norms=True),
    dict(param_dtype="bfloat16", dtype="bfloat16"),
])
def test_unsharded_parameters_are_the_model_bytes(kwargs):
  cfg = dataclasses.replace(BASE, **kwargs)
  itemsize = 2 if cfg.param_dtype == "bfloat16" else 4
  assert memory.param_bytes(cfg) == cfg.num_params() * itemsize


def test_model_shards_split_heads_mlp_and_vocab():
  one, four = memory.param_bytes(BASE), memory.param_bytes(BASE, model_shards=4)
  d, hd, v = 32, 8, 96
  # Per layer: 4 query heads -> 1 per shard; 2 kv heads < 4 shards stay replicated; MLP / 4.
  attn = d * (1 + 2 * 2) * hd + 1 * hd * d
  layer = attn + 3 * d * 64 / 4 + 2 * d
  assert four == 4 * (3 * layer + d + v * d + d * v / 4)
  assert four < one
  with pytest.raises(ValueError, match=r"mlp_dim=64 does not split over a 'model' axis of 3"):
    memory.param_bytes(dataclasses.replace(BASE, num_heads=3, num_kv_heads=1, head_dim=8),
                       model_shards=3)


def test_kv_cache_bytes_match_the_cache_arrays():
  for cfg, rows in ((BASE, 5), (dataclasses.replace(BASE, dtype="bfloat16"), 3)):
    cache = KVCache.empty(cfg, rows, 40)
    actual = sum(x.nbytes for x in jax.tree.leaves((cache.k, cache.v, cache.mask, cache.pos)))
    assert memory.kv_cache_bytes(cfg, rows, 40) == actual
  # Rows split over 'data' (rounded up), kv heads over 'model' when there are enough.
  assert memory.kv_cache_bytes(BASE, 5, 40, data_shards=2) == memory.kv_cache_bytes(BASE, 3, 40)
  mha = dataclasses.replace(BASE, num_kv_heads=4)
  per_row = 2 * 3 * 8 * 40 * 4
  assert memory.kv_cache_bytes(mha, 1, 40, model_shards=4) == per_row + 40 + 4


def test_check_names_the_need_and_the_remedy():
  p = memory.plan([memory.Use("policy", BASE, rows=512, cache_size=160),
                   memory.Use("prm", dataclasses.replace(BASE, head="value"), rows=512,
                              cache_size=160, copies=2)])
  assert p.total == sum(b for _, b in p.parts)  # no full pass planned
  memory.check(p, available=int(p.total / 0.9) + 1)
  with pytest.raises(memory.OutOfMemoryPlan,
                     match=r"needs [\d.]+ GiB per device \(policy parameters .*prm KV cache.*\), "
                           r"[\d.]+ GiB available.*lower rows_per_call.*'model' shards"):
    memory.check(p, available=int(p.total))
  assert memory.device_bytes() > 0  # CPU: the host's memory per local device


def test_full_passes_count_beside_decoding_not_on_top():
  """A stage scoring whole rows holds one layer's attention scores (rows x heads x
  length^2) instead of KV caches: a plan is the parameters plus the larger of the two."""
  cfg = dataclasses.replace(BASE, max_seq_len=512)
  decode = memory.plan([memory.Use("prm", cfg, rows=4, cache_size=512)], data_shards=2)
  both = memory.plan([memory.Use("prm", cfg, rows=4, cache_size=512, full_pass_rows=8)],
                     data_shards=2)
  params = memory.param_bytes(cfg)
  full = memory.full_pass_bytes(cfg, 8, 512, data_shards=2)
  assert full == 4 * (cfg.num_heads * 512 * 512 * 4 + 512 * (3 * cfg.d_model + 2 * cfg.mlp_dim) * 4
                      + 2 * 256 * cfg.vocab_size * 4)  # an LM head: one chunk of logits
  assert both.total == params + max(decode.total - params, full)
  assert "full pass" in both.describe()
  # Query heads and MLP units split over 'model'.
  value = dataclasses.replace(cfg, head="value")
  assert memory.full_pass_bytes(value, 8, 512, model_shards=2) == 8 * (
      2 * 512 * 512 * 4 + 512 * (3 * 32 + 2 * 32) * 4)
  # Two models' full passes run one after the other: the larger counts.
  two = memory.plan([memory.Use("a", cfg, rows=1, cache_size=512, full_pass_rows=8),
                     memory.Use("b", value, rows=1, cache_size=512, full_pass_rows=8)])
  assert two.total == (memory.param_bytes(cfg) + memory.param_bytes(value)
                       + memory.full_pass_bytes(cfg, 8, 512))
