"""Tests for the Llama-style decoder: transformers parity, KV cache, heads, config."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from conftest import assert_close
from conftest import make_forward
from ttc_jax.models.hf_convert import to_hf_llama
from ttc_jax.models.transformer import KVCache
from ttc_jax.models.transformer import Transformer
from ttc_jax.models.transformer import TransformerConfig
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.sampling.core import row_keys

V = 64


def jit_model(model: Transformer):
  """A jitted ``model(tokens, valid, cache, readout=...)`` (the model is closed over)."""
  graphdef, params = nnx.split(model)

  @functools.partial(jax.jit, static_argnames=("readout",))
  def call(params, tokens, valid, cache, readout):
    return nnx.merge(graphdef, params)(tokens, valid, cache, readout=readout)

  def f(tokens, valid=None, cache=None, readout="all"):
    tokens = jnp.asarray(tokens, jnp.int32)
    valid = jnp.ones(tokens.shape, bool) if valid is None else jnp.asarray(valid, bool)
    return call(params, tokens, valid, cache, readout)

  return f


def left_padded(rs, lengths, width, vocab=V):
  tokens = np.zeros((len(lengths), width), np.int64)
  mask = np.zeros((len(lengths), width), bool)
  for i, n in enumerate(lengths):
    tokens[i, width - n:] = rs.randint(0, vocab, n)
    mask[i, width - n:] = True
  return tokens, mask


# ----------------------------------------------------------------------------
# Parity with transformers' LlamaForCausalLM
# ----------------------------------------------------------------------------
# init_std=0.3 instead of 0.02: at 0.02 the tiny model's logits are almost flat
# (std ~0.01), so greedy argmax margins would be ~1e-4 and float32 differences
# between the two frameworks could legitimately flip a token; at 0.3 the logits
# have std ~2 and the comparison tests the maths, not rounding luck.
_HF_BASE = TransformerConfig(vocab_size=V, d_model=64, num_layers=2, num_heads=4,
                             num_kv_heads=2, mlp_dim=128, max_seq_len=64, init_std=0.3)
_HF_VARIANTS = {
    "gqa": _HF_BASE,
    "gqa_tied": dataclasses.replace(_HF_BASE, tie_embeddings=True),
    # Multi-head attention, an explicit head_dim != d_model // num_heads and
    # non-default rope_theta / norm_eps, to check the config mapping too.
    "mha_theta": dataclasses.replace(_HF_BASE, num_kv_heads=None, head_dim=8,
                                     rope_theta=100.0, norm_eps=1e-5),
}


@pytest.fixture(scope="module", params=sorted(_HF_VARIANTS))
def hf_pair(request):
  model = Transformer(_HF_VARIANTS[request.param], rngs=nnx.Rngs(1))
  return request.param, model, to_hf_llama(model)


def test_hf_logits_match_on_left_padded_batch(hf_pair):
  name, model, hf = hf_pair
  rs = np.random.RandomState(2)
  tokens, mask = left_padded(rs, [12, 7, 1, 10, 12], 12)
  jax_logits = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask))[0])
  position_ids = np.maximum(np.cumsum(mask, 1) - 1, 0)
  with torch.no_grad():
    hf_logits = hf(input_ids=torch.from_numpy(tokens),
                   attention_mask=torch.from_numpy(mask.astype(np.int64)),
                   position_ids=torch.from_numpy(position_ids)).logits.numpy()
  assert jax_logits.shape == hf_logits.shape == (5, 12, V)
  assert np.abs(jax_logits[mask]).std() > 0.5, "logits too flat for a meaningful check"
  assert_close(jax_logits[mask], hf_logits[mask], err_msg=name)


def test_hf_greedy_generation_matches(hf_pair):
  _, model, hf = hf_pair
  rs = np.random.RandomState(3)
  tokens, mask = left_padded(rs, [9, 4, 6, 1], 9)
  n = 12
  with torch.no_grad():
    hf_out = hf.generate(input_ids=torch.from_numpy(tokens),
                         attention_mask=torch.from_numpy(mask.astype(np.int64)),
                         do_sample=False, max_new_tokens=n, min_new_tokens=n,
                         pad_token_id=0).numpy()
  core = SamplingCore(model)  # No EOS: every row runs the full n tokens.
  out = core.generate(tokens, mask, row_keys(0, np.arange(4)),
                      SamplingParams(temperature=0.0, max_new_tokens=n))
  np.testing.assert_array_equal(np.asarray(out.lengths), n)
  np.testing.assert_array_equal(np.asarray(out.tokens), hf_out[:, 9:])


# ----------------------------------------------------------------------------
# KV cache
# ----------------------------------------------------------------------------
_SMALL = TransformerConfig(vocab_size=V, d_model=32, num_layers=2, num_heads=4,
                           num_kv_heads=2, mlp_dim=64, max_seq_len=32, init_std=0.3)


@pytest.fixture(scope="module")
def small():
  model = Transformer(_SMALL, rngs=nnx.Rngs(4))
  return model, jit_model(model), make_forward(model)


def test_prefill_then_decode_matches_full_forward(small):
  model, call, fwd = small
  tokens = np.random.RandomState(5).randint(0, V, (3, 12))
  full = fwd(tokens, np.ones_like(tokens, bool))
  cache = KVCache.empty(model.config, 3, 16)
  got = []
  out, cache = call(tokens[:, :5], cache=cache)  # prefill
  got.append(out)
  out, cache = call(tokens[:, 5:8], cache=cache)  # a chunk
  got.append(out)
  for t in range(8, 12):  # token by token
    out, cache = call(tokens[:, t:t + 1], cache=cache)
    got.append(out)
  assert_close(np.concatenate(got, 1), full)
  assert int(cache.index) == 12
  np.testing.assert_array_equal(cache.pos, 12)
  np.testing.assert_array_equal(cache.mask, np.arange(16)[None].repeat(3, 0) < 12)


def test_unused_cache_slots_do_not_matter(small):
  model, call, _ = small
  tokens = np.random.RandomState(6).randint(0, V, (3, 6))
  _, c16 = call(tokens[:, :5], cache=KVCache.empty(model.config, 3, 16))
  _, c24 = call(tokens[:, :5], cache=KVCache.empty(model.config, 3, 24))
  a, _ = call(tokens[:, 5:], cache=c16)
  b, _ = call(tokens[:, 5:], cache=c24)
  c, _ = call(tokens[:, 5:], cache=c16.resized(24))
  assert_close(a, b)
  assert_close(a, c)


def test_padding_does_not_change_a_rows_logits(small):
  """Left, right and interior padding, without and with the cache (+ decode)."""
  model, call, fwd = small
  rs = np.random.RandomState(7)
  x = rs.randint(0, V, 7)
  y = rs.randint(0, V, 3)  # decoded after the padded prefill
  ref = fwd(np.concatenate([x, y])[None], np.ones((1, 10), bool))[0]  # (10, V)
  tokens = np.zeros((3, 10), np.int64)
  valid = np.zeros((3, 10), bool)
  layouts = [np.arange(3, 10),  # left-padded
             np.arange(0, 7),  # right-padded
             np.array([0, 1, 4, 5, 6, 8, 9])]  # holes inside the prompt
  for r, cols in enumerate(layouts):
    tokens[r, cols] = x
    valid[r, cols] = True
  # Pad slots hold a real-looking token: only the mask may hide them.
  tokens[~valid] = 17
  nocache = fwd(tokens, valid)
  for r, cols in enumerate(layouts):
    assert_close(nocache[r, cols], ref[:7], err_msg=f"row {r}")
  cache = KVCache.empty(model.config, 3, 16)
  out, cache = call(tokens, valid, cache)
  for r, cols in enumerate(layouts):
    assert_close(out[r, cols], ref[:7], err_msg=f"row {r}")
  np.testing.assert_array_equal(cache.pos, 7)
  for t in range(3):
    out, cache = call(np.full((3, 1), y[t]), cache=cache)
    assert_close(out[:, 0], np.broadcast_to(ref[7 + t], (3, V)))


# Gemma 2 / Mistral style: a sliding window of 3 on the first layer. With holes in the
# cache, a key's position is its row's count of filled slots before it, not its slot.
_SLIDING = dataclasses.replace(_SMALL, layer_types=("sliding", "full"), sliding_window=3)


@pytest.fixture(scope="module")
def sliding():
  model = Transformer(_SLIDING, rngs=nnx.Rngs(4))
  return model, jit_model(model), make_forward(model)


def test_holes_do_not_change_later_outputs(small):
  """Rows that skip a step (invalid slot) continue exactly as if they had not."""
  _check_holes(*small)


def test_a_sliding_window_sees_through_holes_and_compaction(small, sliding):
  """The same with a sliding-window layer (the window counts tokens, not slots), and the
  cache compacted afterwards (slots move; positions do not)."""
  _check_holes(*sliding)
  model, call, fwd = sliding
  small_out = small[2](np.arange(12)[None] % V, np.ones((1, 12), bool))
  assert not np.allclose(fwd(np.arange(12)[None] % V, np.ones((1, 12), bool)), small_out)


def _check_holes(model, call, fwd):
  rs = np.random.RandomState(8)
  seqs = rs.randint(0, V, (3, 12))
  full = fwd(seqs, np.ones_like(seqs, bool))
  cache = KVCache.empty(model.config, 3, 24)
  out, cache = call(seqs[:, :5], cache=cache)
  ptr = np.full(3, 5)
  # A 3-token chunk in which row 1 has nothing and row 2 only its first token.
  chunk_valid = np.array([[1, 1, 1], [0, 0, 0], [1, 0, 0]], bool)
  chunk = np.full((3, 3), 33)
  for r in range(3):
    n = chunk_valid[r].sum()
    chunk[r, :n] = seqs[r, ptr[r]:ptr[r] + n]
  out, cache = call(chunk, chunk_valid, cache, readout="last")
  assert_close(np.asarray(out)[[0, 2]], full[[0, 2], [7, 5]])
  ptr += chunk_valid.sum(1)
  # Then single-token steps with single-slot holes.
  holes = [[], [0], [0, 1], [2], [], []]
  for step_holes in holes:
    v = np.ones((3, 1), bool)
    v[step_holes] = False
    tok = np.where(v[:, 0], seqs[np.arange(3), np.minimum(ptr, 11)], 5)[:, None]
    out, cache = call(tok, v, cache)
    for r in range(3):
      if v[r, 0]:
        assert_close(out[r, 0], full[r, ptr[r]], err_msg=f"row {r} token {ptr[r]}")
    ptr += v[:, 0]
  assert ptr.tolist() == [12, 10, 11]
  np.testing.assert_array_equal(cache.pos, ptr)
  assert int(cache.index) == 5 + 3 + len(holes)
  assert cache.mask.sum(1).tolist() == ptr.tolist()
  # Compacted, each row continues where it stood (rows 1 and 2 with their next tokens).
  cache = cache.compact()
  assert int(cache.index) == 12
  more = rs.randint(0, V, (3, 2))
  nxt = np.stack([np.concatenate([seqs[r, :ptr[r]], more[r]])[ptr[r]:ptr[r] + 2]
                  for r in range(3)])
  out, cache = call(nxt, cache=cache)
  for r in range(3):
    whole = np.concatenate([seqs[r, :ptr[r]], more[r]])[None]
    ref = fwd(whole, np.ones_like(whole, bool))[0]
    assert_close(out[r], ref[ptr[r]:ptr[r] + 2], err_msg=f"row {r} after compaction")


def test_kv_cache_gather_selects_rows(small):
  model, call, _ = small
  rs = np.random.RandomState(9)
  tokens, valid = left_padded(rs, [6, 3, 5], 6)
  nxt = rs.randint(0, V, (3, 2))
  _, cache = call(tokens, valid, KVCache.empty(model.config, 3, 16))
  rows = np.array([2, 0, 0])
  gathered = cache.gather(jnp.asarray(rows))
  assert gathered.batch_size == 3 and int(gathered.index) == int(cache.index)
  np.testing.assert_array_equal(gathered.pos, np.asarray(cache.pos)[rows])
  # Reference: the selected rows prefilled directly, in that order.
  _, ref_cache = call(tokens[rows], valid[rows], KVCache.empty(model.config, 3, 16))
  for t in range(2):
    got, gathered = call(nxt[:, t:t + 1], cache=gathered)
    ref, ref_cache = call(nxt[:, t:t + 1], cache=ref_cache)
    assert_close(got, ref)
  # Distinct source rows really differ (so the check above can fail).
  assert np.abs(np.asarray(got[0]) - np.asarray(got[1])).max() > 1e-2


def test_readout_last_and_hidden(small):
  model, call, _ = small
  rs = np.random.RandomState(10)
  tokens = rs.randint(0, V, (2, 6))
  valid = np.array([[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]], bool)
  all_, _ = call(tokens, valid)
  last, _ = call(tokens, valid, readout="last")
  hidden, _ = call(tokens, valid, readout="hidden")
  assert last.shape == (2, V) and hidden.shape == (2, 6, 32)
  assert_close(last, np.asarray(all_)[[0, 1], [3, 5]])
  with pytest.raises(ValueError, match="readout='middle'"):
    call(tokens, valid, readout="middle")


def test_value_head_shapes_and_last_readout():
  cfg = dataclasses.replace(_SMALL, head="value", num_layers=1)
  model = Transformer(cfg, rngs=nnx.Rngs(11))
  call = jit_model(model)
  rs = np.random.RandomState(12)
  tokens = rs.randint(0, V, (3, 5))
  valid = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 1, 1, 1]], bool)
  values, cache = call(tokens, valid)
  assert values.shape == (3, 5) and values.dtype == jnp.float32 and cache is None
  last, _ = call(tokens, valid, readout="last")
  assert last.shape == (3,)
  assert_close(last, np.asarray(values)[[0, 1, 2], [4, 1, 4]])
  # Values are per position, not a constant.
  assert np.ptp(np.asarray(values)[valid]) > 1e-3
  with pytest.raises(ValueError, match="head='value'"):
    to_hf_llama(model)
  with pytest.raises(ValueError, match="head='value'"):
    SamplingCore(model)


def test_cache_errors():
  with pytest.raises(ValueError, match="cache size 0 must be > 0"):
    KVCache.empty(_SMALL, 1, 0)
  # Slots are storage, not context (holes of the shared write index): a cache may
  # hold more slots than max_seq_len.
  assert KVCache.empty(_SMALL, 1, 40).size == 40 > _SMALL.max_seq_len


def test_chunk_larger_than_cache_raises(small):
  model, _, _ = small
  cache = KVCache.empty(model.config, 1, 4)
  with pytest.raises(ValueError, match="chunk of 5 tokens does not fit a cache of 4"):
    model(jnp.zeros((1, 5), jnp.int32), cache=cache)


# ----------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(num_heads=4, num_kv_heads=3), r"num_heads=4 .*num_kv_heads=3"),
    (dict(num_heads=4, num_kv_heads=0), r"num_kv_heads=0"),
    (dict(d_model=30, num_heads=4), r"d_model=30 .*num_heads=4"),
    (dict(d_model=12, num_heads=4), r"head_dim=3 must be even"),
    (dict(head_dim=5), r"head_dim=5"),
    (dict(head="foo"), r"head='foo'"),
    (dict(vocab_size=0), r"vocab_size"),
    (dict(num_layers=0), r"num_layers"),
    (dict(max_seq_len=-1), r"max_seq_len"),
    (dict(head="value", tie_embeddings=True), r"tie_embeddings"),
])
def test_config_rejects_bad_values(kwargs, match):
  base = dict(vocab_size=V, d_model=32, num_heads=4)
  with pytest.raises(ValueError, match=match):
    TransformerConfig(**{**base, **kwargs})


@pytest.mark.parametrize("kwargs", [
    dict(),  # GQA, untied LM head
    dict(tie_embeddings=True),
    dict(head="value"),
    dict(num_kv_heads=None, head_dim=16, num_layers=3),  # MHA, head_dim != d/h
])
def test_num_params_matches_model(kwargs):
  cfg = dataclasses.replace(_SMALL, **kwargs)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert cfg.num_params() == count
  embeddings = V * cfg.d_model * (2 if cfg.head == "lm" and not cfg.tie_embeddings else 1)
  assert cfg.num_params(include_embeddings=False) == count - embeddings


@pytest.mark.parametrize("tied, extra_layers", [(False, 2), (True, 0)])
def test_a_copied_language_model_computes_its_source_s_logits(tied, extra_layers):
  """copy_backbone(..., lm_head=True) (the revision model from the policy): a target with a
  longer context and extra identity blocks computes the source's next-token logits; without
  the head an untied target's logits are its random head's."""
  from ttc_jax.models import checkpoints
  src_cfg = dataclasses.replace(_SMALL, num_layers=2, tie_embeddings=tied, init_std=0.3)
  source = Transformer(src_cfg, rngs=nnx.Rngs(21))
  tgt_cfg = dataclasses.replace(src_cfg, max_seq_len=4 * src_cfg.max_seq_len,
                                num_layers=2 + extra_layers)
  target = checkpoints.copy_backbone(source, Transformer(tgt_cfg, rngs=nnx.Rngs(22)),
                                     lm_head=True)
  rs = np.random.RandomState(23)
  tokens, valid = left_padded(rs, [9, 5, 12], 12)
  want, _ = jit_model(source)(tokens, valid)
  got, _ = jit_model(target)(tokens, valid)
  scale = float(np.abs(np.asarray(want)[valid]).max())
  np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid],
                             atol=1e-5 * scale, rtol=0)
  if not tied:
    headless = checkpoints.copy_backbone(source, Transformer(tgt_cfg, rngs=nnx.Rngs(22)))
    other, _ = jit_model(headless)(tokens, valid)
    assert np.abs(np.asarray(other)[valid] - np.asarray(want)[valid]).max() > 0.1 * scale
  value = Transformer(dataclasses.replace(src_cfg, head="value", tie_embeddings=False),
                      rngs=nnx.Rngs(24))
  with pytest.raises(ValueError, match="lm_head=True copies an LM head"):
    checkpoints.copy_backbone(source, value, lm_head=True)
