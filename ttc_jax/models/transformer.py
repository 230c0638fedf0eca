"""One Llama-style decoder for the policy, the PRM/ORM and the revision model.

RMSNorm, rotary position embeddings (the "rotate half" convention of Llama and
transformers), SwiGLU MLP and grouped-query attention; an LM head (policy,
revision) or a scalar value head (PRM/ORM) on the same class.

The model runs in one of two modes through a single ``__call__``:

* without a cache (training, scoring whole sequences): causal attention over the
  given tokens, with padding handled by ``valid``;
* with a :class:`KVCache` (prefill, single-token decode, incremental scoring):
  the new tokens are written at the cache's shared write index and attend to
  every valid slot written before them.

The cache keeps one write index for the whole batch. A row that has nothing to
add at some step (it finished, or its chunk is shorter than the others') writes
an invalid slot there: a hole masked out of attention. RoPE positions are
per row (``cache.pos``), so holes and left padding never shift positions. This
keeps every shape fixed and every cache write a single ``dynamic_update_slice``,
which is what makes tree expansion a plain gather over the batch axis.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from flax import struct

Array = jax.Array

# Large finite negative used for masked attention scores: a query with no valid
# key (a padded row) then gets a finite, ignored output instead of NaN.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling of a long-context checkpoint (transformers' rope_parameters).

  kind 'llama3': Llama 3.1+ (wavelengths above original_max_position / low_freq_factor
  are divided by ``factor``, those below original_max_position / high_freq_factor kept,
  the band between interpolated); 'linear': every frequency divided by ``factor``.
  """

  kind: str
  factor: float
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position: int = 8192

  def __post_init__(self):
    if self.kind not in ("llama3", "linear"):
      raise ValueError(f"RoPE scaling {self.kind!r}: supported are 'llama3' and 'linear'.")
    if not self.factor > 0:
      raise ValueError(f"RoPE scaling factor={self.factor}: expected > 0.")
    if self.kind == "llama3" and not self.high_freq_factor > self.low_freq_factor:
      raise ValueError(f"llama3 RoPE scaling needs high_freq_factor > low_freq_factor; got "
                       f"{self.high_freq_factor} and {self.low_freq_factor}.")

  def apply(self, inv_freq: Array) -> Array:
    if self.kind == "linear":
      return inv_freq / self.factor
    wavelen = 2 * jnp.pi / inv_freq
    low_wavelen = self.original_max_position / self.low_freq_factor
    high_wavelen = self.original_max_position / self.high_freq_factor
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / self.factor, inv_freq)
    smooth = ((self.original_max_position / wavelen - self.low_freq_factor)
              / (self.high_freq_factor - self.low_freq_factor))
    mid = (1 - smooth) * scaled / self.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, mid, scaled)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyper-parameters of the decoder. Frozen and hashable (safe as a static)."""

  vocab_size: int
  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int | None = None  # None: multi-head attention (= num_heads).
  head_dim: int | None = None  # None: d_model // num_heads.
  mlp_dim: int = 512
  max_seq_len: int = 512  # The context: tokens per row (RoPE positions 0 .. max_seq_len - 1).
  rope_theta: float = 10000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  # 'lm': next-token logits; 'value': one scalar (our PRM / ORM); 'classifier': logits over
  # num_labels from a two-layer head, Linear-ReLU-Linear (Qwen2.5-Math-PRM's step classifier).
  head: Literal["lm", "value", "classifier"] = "lm"
  num_labels: int = 2  # outputs of the 'classifier' head
  init_std: float = 0.02
  dtype: str = "float32"  # Activation dtype.
  param_dtype: str = "float32"
  # Architecture variants of imported checkpoints (ttc_jax.models.hf_import); the defaults
  # are the Llama-style decoder trained here.
  qkv_bias: bool = False  # biases on the query/key/value projections (Qwen2)
  rope_scaling: RopeScaling | None = None  # Llama 3's frequency-dependent RoPE scaling
  norm_offset: float = 0.0  # RMSNorm multiplies by (norm_offset + scale) (Gemma: 1)
  embed_scale: bool = False  # embeddings times sqrt(d_model) (Gemma)
  activation: Literal["silu", "gelu", "gelu_tanh"] = "silu"  # the gated MLP's gate
  post_norms: bool = False  # RMSNorm on the attention and MLP outputs too (Gemma 2)
  query_scale: float | None = None  # None: head_dim ** -0.5 (Gemma 2: query_pre_attn_scalar ** -0.5)
  attn_softcap: float | None = None  # cap * tanh(logit / cap) on attention logits (Gemma 2)
  final_softcap: float | None = None  # the same on the LM head's logits (Gemma 2)
  # Layers marked 'sliding' attend to keys at most ``sliding_window - 1`` positions back
  # (Gemma 2 alternates them with 'full' layers). None: every layer is 'full'.
  layer_types: tuple[str, ...] | None = None
  sliding_window: int | None = None

  def __post_init__(self):
    kv = self.kv_heads
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "mlp_dim",
                 "max_seq_len"):
      if getattr(self, name) <= 0:
        raise ValueError(f"TransformerConfig.{name} must be > 0, got {getattr(self, name)}.")
    if kv <= 0 or self.num_heads % kv:
      raise ValueError(
          f"num_heads={self.num_heads} must be a positive multiple of "
          f"num_kv_heads={kv}.")
    if self.head_dim is None and self.d_model % self.num_heads:
      raise ValueError(
          f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
          "set head_dim explicitly.")
    if self.dim_per_head % 2:
      raise ValueError(f"head_dim={self.dim_per_head} must be even for RoPE.")
    if self.head not in ("lm", "value", "classifier"):
      raise ValueError(f"head={self.head!r}: expected 'lm', 'value' or 'classifier'.")
    if self.head == "classifier" and self.num_labels < 2:
      raise ValueError(f"num_labels={self.num_labels}: a classifier head needs >= 2.")
    if self.tie_embeddings and self.head != "lm":
      raise ValueError("tie_embeddings=True needs head='lm'.")
    if self.activation not in ("silu", "gelu", "gelu_tanh"):
      raise ValueError(f"activation={self.activation!r}: expected 'silu', 'gelu' or 'gelu_tanh'.")
    if isinstance(self.layer_types, list):
      object.__setattr__(self, "layer_types", tuple(self.layer_types))
    if isinstance(self.rope_scaling, dict):
      object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
    if self.layer_types is not None:
      bad = [t for t in self.layer_types if t not in ("full", "sliding")]
      if len(self.layer_types) != self.num_layers or bad:
        raise ValueError(f"layer_types={self.layer_types}: expected num_layers={self.num_layers} "
                         "entries, each 'full' or 'sliding'.")
      if "sliding" in self.layer_types and not (self.sliding_window or 0) > 0:
        raise ValueError(f"sliding layers need sliding_window > 0; got {self.sliding_window}.")
    for name in ("attn_softcap", "final_softcap", "query_scale"):
      value = getattr(self, name)
      if value is not None and not value > 0:
        raise ValueError(f"{name}={value}: expected None or a number > 0.")

  def is_sliding(self, layer: int) -> bool:
    return self.layer_types is not None and self.layer_types[layer] == "sliding"

  @property
  def kv_heads(self) -> int:
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def dim_per_head(self) -> int:
    return self.head_dim if self.head_dim is not None else self.d_model // self.num_heads

  def num_params(self, include_embeddings: bool = True) -> int:
    """Parameter count (matches ``nnx.state(model, nnx.Param)``)."""
    d, hd = self.d_model, self.dim_per_head
    attn = d * (self.num_heads + 2 * self.kv_heads) * hd + self.num_heads * hd * d
    if self.qkv_bias:
      attn += (self.num_heads + 2 * self.kv_heads) * hd
    mlp = 3 * d * self.mlp_dim
    per_layer = attn + mlp + (4 if self.post_norms else 2) * d
    n = self.num_layers * per_layer + d  # + final norm
    emb = self.vocab_size * d
    if self.head == "lm":
      head = 0 if self.tie_embeddings else d * self.vocab_size
    elif self.head == "value":
      head = d + 1
    else:
      head = d * d + d + d * self.num_labels + self.num_labels
    if include_embeddings:
      n += emb + head
    else:
      n += head if self.head != "lm" else 0
    return n


# Positions whose vocabulary logits exist at once when a full pass reads an LM head at every
# position (the policy's likelihood: ttc_jax.verifiers.scoring); the memory planner counts it.
HEAD_CHUNK = 256


# The slot axis of a cache's keys (B, KV, head_dim, S) and values (B, KV, S, head_dim).
K_SLOTS, V_SLOTS = 3, 2


@struct.dataclass
class KVCache:
  """Explicit key/value cache; every leaf but ``index`` has the batch leading.

  k: per layer, (B, num_kv_heads, head_dim, S): keys stored transposed, the slots last, so
    that a decode step's scores (one query against every slot) read the cache as it lies.
    Stored (B, KV, S, head_dim), XLA:CPU transposed the whole cache at every step: one layer's
    scores and values at 512 rows, 288 slots took 30.5 ms against 6.4 ms (AMD EPYC, 2 cores).
  v: per layer, (B, num_kv_heads, S, head_dim) (the probabilities' contraction reads it so).
  mask: (B, S) bool, True where the slot holds a token of that row.
  pos: (B,) int32, the RoPE position the row's next token gets.
  index: () int32, the next slot to write (shared by all rows).
  """

  k: tuple[Array, ...]
  v: tuple[Array, ...]
  mask: Array
  pos: Array
  index: Array

  @property
  def batch_size(self) -> int:
    return self.mask.shape[0]

  @property
  def size(self) -> int:
    return self.mask.shape[1]

  @classmethod
  def empty(cls, config: TransformerConfig, batch_size: int, size: int) -> "KVCache":
    """A cache of ``size`` slots. Slots are storage: with the shared write index a
    row may leave holes, so ``size`` may exceed the context ``max_seq_len``."""
    if size <= 0:
      raise ValueError(f"cache size {size} must be > 0.")
    dt = jnp.dtype(config.dtype)
    b, kv, hd = batch_size, config.kv_heads, config.dim_per_head
    zeros = lambda shape: tuple(jnp.zeros(shape, dt) for _ in range(config.num_layers))
    return cls(
        k=zeros((b, kv, hd, size)), v=zeros((b, kv, size, hd)),
        mask=jnp.zeros((batch_size, size), jnp.bool_),
        pos=jnp.zeros((batch_size,), jnp.int32),
        index=jnp.zeros((), jnp.int32))

  def resized(self, size: int) -> "KVCache":
    """The same cache with ``size`` slots: the tail is cut (it must be unused)
    or padded with empty slots. Decode reads every slot of the cache each step,
    so the sampler runs on a cache sized to what the current segment needs."""
    if size == self.size:
      return self
    if size < self.size:
      return self._on_slots(lambda x, axis: jax.lax.slice_in_dim(x, 0, size, axis=axis))
    extra = size - self.size

    def pad(x, axis):
      widths = [(0, 0)] * x.ndim
      widths[axis] = (0, extra)
      return jnp.pad(x, widths)
    return self._on_slots(pad)

  def compact(self) -> "KVCache":
    """Moves each row's filled slots to the front (order kept) and resets ``index``.

    All rows share one write index, so a row that adds fewer tokens than the
    longest row in a call leaves masked holes; a tree search compacts after
    each round so that the cache holds the longest row, not the sum of the
    longest steps. Attention only sees the mask, and keys carry their RoPE
    rotation, so moving slots does not change what the model computes.
    """
    order = jnp.argsort(jnp.logical_not(self.mask).astype(jnp.int8), axis=1, stable=True)

    def take(x, axis):
      at = order.reshape(order.shape[:1] + (1,) * (axis - 1) + order.shape[1:]
                         + (1,) * (x.ndim - axis - 1))
      return jnp.take_along_axis(x, at, axis=axis)
    return self._on_slots(take).replace(
        index=jnp.max(jnp.sum(self.mask, axis=1)).astype(jnp.int32))

  def shifted(self, shift: Array) -> "KVCache":
    """Every row's slots moved ``shift`` to the left (the first ``shift`` dropped; a
    negative shift moves them right, the last ``-shift`` dropped), the vacated slots
    masked, and ``index`` with them: a cache of continuous batching reclaims the slots no
    live row reads, or makes room before the index for a longer prompt (keys carry their
    RoPE rotation, so nothing the model computes changes)."""
    slot = jnp.arange(self.size)
    keep = jnp.where(shift >= 0, slot < self.size - shift, slot >= -shift)
    out = self._on_slots(lambda x, axis: jnp.roll(x, -shift, axis=axis))
    return out.replace(mask=out.mask & keep[None], index=self.index - shift)

  def inserted(self, rows: Array, new: "KVCache") -> "KVCache":
    """Rows ``rows`` replaced by ``new``'s (a prefill of new requests): row ``rows[j]``
    holds new row j's slots at ``[index - new.size, index)`` and nothing else (its other
    slots masked) and its RoPE position; indices >= the batch are dropped (padding).
    ``index`` must be >= ``new.size`` (the caller's check)."""
    start = self.index - new.size
    n = rows.shape[0]

    def put(big, small, axis):
      cur = jnp.take(big, rows, axis=0, mode="clip")
      cur = jax.lax.dynamic_update_slice_in_dim(cur, small.astype(big.dtype), start, axis=axis)
      return big.at[rows].set(cur, mode="drop")

    mask = jax.lax.dynamic_update_slice_in_dim(jnp.zeros((n, self.size), jnp.bool_), new.mask,
                                               start, axis=1)
    return KVCache(k=tuple(put(a, b, K_SLOTS) for a, b in zip(self.k, new.k)),
                   v=tuple(put(a, b, V_SLOTS) for a, b in zip(self.v, new.v)),
                   mask=self.mask.at[rows].set(mask, mode="drop"),
                   pos=self.pos.at[rows].set(new.pos, mode="drop"), index=self.index)

  def _on_slots(self, fn) -> "KVCache":
    """The cache with ``fn(leaf, slot_axis)`` applied to every key, value and the mask
    (their slot axes differ: :data:`K_SLOTS`, :data:`V_SLOTS`, 1); ``pos`` and ``index``
    kept."""
    return KVCache(k=tuple(fn(x, K_SLOTS) for x in self.k),
                   v=tuple(fn(x, V_SLOTS) for x in self.v),
                   mask=fn(self.mask, 1), pos=self.pos, index=self.index)

  def gather(self, rows: Array) -> "KVCache":
    """Re-selects rows (tree expansion): ``rows`` indexes the batch axis."""
    take = lambda x: jnp.take(x, rows, axis=0)
    return KVCache(
        k=tuple(map(take, self.k)), v=tuple(map(take, self.v)),
        mask=take(self.mask), pos=take(self.pos), index=self.index)


def _init(std):
  return nnx.initializers.normal(stddev=std)


class RMSNorm(nnx.Module):
  """RMSNorm; the output is multiplied by ``offset + scale`` (Gemma stores scale - 1:
  offset 1, and the scale starts at 0)."""

  def __init__(self, dim: int, eps: float, param_dtype, offset: float = 0.0):
    self.eps = eps
    self.offset = offset
    self.scale = nnx.Param(jnp.full((dim,), 1.0 - offset, param_dtype))

  def __call__(self, x: Array) -> Array:
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    scale = self.scale[...].astype(jnp.float32)
    return (y * (scale + self.offset if self.offset else scale)).astype(x.dtype)


def dense(x: Array, w: Array) -> Array:
  """``x @ w`` for x (..., d) and w (d, ...), the leading axes of x flattened into one rows axis
  first. XLA:CPU runs the backward of a (B, T, d) @ (d, m) product (its weight gradient
  contracts B and T together) far slower than the same product over (B * T, d) rows: the
  policy's MLP gradient at (32, 96) tokens 69 -> 38 ms (AMD EPYC, 2 cores), the same values
  bit for bit on one device; a batch split over devices rounds its gradients differently."""
  y = x.reshape((-1, x.shape[-1])) @ w
  return y.reshape(x.shape[:-1] + w.shape[1:])


def softcap(x: Array, cap: float | None) -> Array:
  """cap * tanh(x / cap) (Gemma 2's logit soft cap); ``x`` itself when cap is None."""
  return x if cap is None else cap * jnp.tanh(x / cap)


def rope_tables(positions: Array, head_dim: int, theta: float,
                scaling: RopeScaling | None = None) -> tuple[Array, Array]:
  """cos and sin of the rotary angles, (B, 1, T, head_dim // 2), float32.

  Computed once per forward and shared by every layer's queries and keys.
  """
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if scaling is not None:
    inv_freq = scaling.apply(inv_freq)
  ang = positions.astype(jnp.float32)[:, None, :, None] * inv_freq
  return jnp.cos(ang), jnp.sin(ang)


def rope(x: Array, tables: tuple[Array, Array]) -> Array:
  """Rotary embedding, "rotate half" convention (Llama). x: (B, H, T, D)."""
  cos, sin = tables
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nnx.Module):
  """Grouped-query attention."""

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    d, hd, h, kv = cfg.d_model, cfg.dim_per_head, cfg.num_heads, cfg.kv_heads
    pdt = jnp.dtype(cfg.param_dtype)
    init = _init(cfg.init_std)
    # Separate projections (not one fused matrix): sharded over 'model', each shard holds
    # whole query heads and whole key/value heads (ttc_jax.models.sharding).
    # Drawn as one matrix and split: the initial values of the fused layout of earlier
    # versions, so a training run started with a seed reproduces across the change.
    q, k, v = jnp.split(init(rngs.params(), (d, (h + 2 * kv) * hd), pdt),
                        [h * hd, (h + kv) * hd], axis=1)
    self.q, self.k, self.v = nnx.Param(q), nnx.Param(k), nnx.Param(v)
    if cfg.qkv_bias:
      self.q_bias = nnx.Param(jnp.zeros((h * hd,), pdt))
      self.k_bias = nnx.Param(jnp.zeros((kv * hd,), pdt))
      self.v_bias = nnx.Param(jnp.zeros((kv * hd,), pdt))
    self.out = nnx.Param(init(rngs.params(), (h * hd, d), pdt))

  def __call__(self, x, rope_tabs, k_cache, v_cache, attn_mask, index):
    """x: (B, T, d); rope_tabs: :func:`rope_tables` of the tokens' positions.

    attn_mask: (B, T, S) over the keys attended to. With caches (:class:`KVCache`)
    the new keys/values are written at ``index`` and the queries attend over
    all S slots; without (None) they attend over the T new tokens.
    Returns (output (B, T, d), k_cache, v_cache).
    """
    cfg = self.cfg
    b, t, _ = x.shape
    h, kv, hd = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
    def project(name):
      y = dense(x, getattr(self, name)[...].astype(x.dtype))
      return y + getattr(self, name + "_bias")[...].astype(x.dtype) if cfg.qkv_bias else y
    q, k, v = project("q"), project("k"), project("v")
    q = q.reshape(b, t, h, hd).transpose(0, 2, 1, 3)  # (B, H, T, D)
    k = k.reshape(b, t, kv, hd).transpose(0, 2, 1, 3)  # (B, KV, T, D)
    v = v.reshape(b, t, kv, hd).transpose(0, 2, 1, 3)
    q = rope(q, rope_tabs)
    k = rope(k, rope_tabs)
    scale = hd ** -0.5 if cfg.query_scale is None else cfg.query_scale
    q = q.reshape(b, kv, h // kv, t, hd) * scale
    if k_cache is not None:  # keys stored transposed (KVCache): (B, KV, D, S)
      k_cache = jax.lax.dynamic_update_slice(
          k_cache, k.swapaxes(2, 3).astype(k_cache.dtype), (0, 0, 0, index))
      v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, 0, index, 0))
      v = v_cache
      scores = jnp.einsum("bkgtd,bkds->bkgts", q, k_cache.astype(q.dtype),
                          preferred_element_type=jnp.float32)
    else:
      scores = jnp.einsum("bkgtd,bksd->bkgts", q, k.astype(q.dtype),
                          preferred_element_type=jnp.float32)
    scores = softcap(scores, cfg.attn_softcap)
    scores = jnp.where(attn_mask[:, None, None], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
    o = jnp.einsum("bkgts,bksd->bkgtd", probs, v.astype(x.dtype))
    o = o.reshape(b, h, t, hd).transpose(0, 2, 1, 3).reshape(b, t, h * hd)
    return dense(o, self.out[...].astype(x.dtype)), k_cache, v_cache


class MLP(nnx.Module):
  """Gated MLP (SwiGLU; GeGLU for Gemma)."""

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    pdt = jnp.dtype(cfg.param_dtype)
    init = _init(cfg.init_std)
    gate, up = jnp.split(init(rngs.params(), (cfg.d_model, 2 * cfg.mlp_dim), pdt), 2, axis=1)
    self.gate, self.up = nnx.Param(gate), nnx.Param(up)  # one draw, as for q/k/v above
    self.down = nnx.Param(init(rngs.params(), (cfg.mlp_dim, cfg.d_model), pdt))
    self.activation = cfg.activation

  def __call__(self, x):
    gate = dense(x, self.gate[...].astype(x.dtype))
    up = dense(x, self.up[...].astype(x.dtype))
    if self.activation == "silu":
      gate = jax.nn.silu(gate)
    else:
      gate = jax.nn.gelu(gate, approximate=self.activation == "gelu_tanh")
    return dense(gate * up, self.down[...].astype(x.dtype))


class Block(nnx.Module):

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    pdt = jnp.dtype(cfg.param_dtype)
    norm = lambda: RMSNorm(cfg.d_model, cfg.norm_eps, pdt, cfg.norm_offset)
    self.attn_norm = norm()
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = norm()
    self.mlp = MLP(cfg, rngs)
    self.post_norms = cfg.post_norms
    if cfg.post_norms:  # Gemma 2: each sublayer's output is normalised before the residual add
      self.attn_post_norm = norm()
      self.mlp_post_norm = norm()

  def __call__(self, x, rope_tabs, k_cache, v_cache, attn_mask, index):
    a, k_cache, v_cache = self.attn(self.attn_norm(x), rope_tabs, k_cache, v_cache,
                                    attn_mask, index)
    m = self.attn_post_norm(a) if self.post_norms else a
    x = x + m
    m = self.mlp(self.mlp_norm(x))
    x = x + (self.mlp_post_norm(m) if self.post_norms else m)
    return x, k_cache, v_cache


class Transformer(nnx.Module):
  """Decoder-only transformer with an LM head or a scalar value head."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    cfg = config
    pdt = jnp.dtype(cfg.param_dtype)
    self.embed = nnx.Param(_init(cfg.init_std)(rngs.params(), (cfg.vocab_size, cfg.d_model), pdt))
    self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pdt, cfg.norm_offset)
    if cfg.head == "lm":
      if not cfg.tie_embeddings:
        self.lm_head = nnx.Param(_init(cfg.init_std)(rngs.params(), (cfg.d_model, cfg.vocab_size), pdt))
    elif cfg.head == "value":
      self.value_head = nnx.Param(_init(cfg.init_std)(rngs.params(), (cfg.d_model,), pdt))
      self.value_bias = nnx.Param(jnp.zeros((), pdt))
    else:
      d, n = cfg.d_model, cfg.num_labels
      self.score_hidden = nnx.Param(_init(cfg.init_std)(rngs.params(), (d, d), pdt))
      self.score_hidden_bias = nnx.Param(jnp.zeros((d,), pdt))
      self.score_out = nnx.Param(_init(cfg.init_std)(rngs.params(), (d, n), pdt))
      self.score_out_bias = nnx.Param(jnp.zeros((n,), pdt))

  # ----------------------------------------------------------------- heads
  def apply_head(self, h: Array) -> Array:
    """Hidden states (..., d) -> logits (..., V), values (...) or label logits (..., L);
    float32."""
    hf = h.astype(jnp.float32)
    f32 = lambda p: p[...].astype(jnp.float32)
    if self.config.head == "value":
      return dense(hf, f32(self.value_head)) + f32(self.value_bias)
    if self.config.head == "classifier":
      hidden = jax.nn.relu(dense(hf, f32(self.score_hidden)) + f32(self.score_hidden_bias))
      return dense(hidden, f32(self.score_out)) + f32(self.score_out_bias)
    w = self.embed[...].T if self.config.tie_embeddings else self.lm_head[...]
    # Not through dense(): on one device every projection's and the value head's gradients are
    # bit for bit those of the 3-D product, the LM head's were not (kept as it was).
    return softcap(hf @ w.astype(jnp.float32), self.config.final_softcap)

  # --------------------------------------------------------------- forward
  def __call__(
      self,
      tokens: Array,
      valid: Array | None = None,
      cache: KVCache | None = None,
      *,
      segments: Array | None = None,
      readout: Literal["all", "last", "hidden"] = "all",
  ) -> tuple[Array, KVCache | None]:
    """Runs the decoder over ``tokens`` (B, T).

    Args:
      tokens: int token ids (B, T).
      valid: (B, T) bool, False for padding (left, right or holes). Default all True.
      cache: a KVCache to extend (prefill, decode, incremental scoring), or None.
      segments: (B, T) int, packed rows (training; no cache): several sequences per row,
        each a run of equal ids. A token attends only to its own sequence, and positions
        restart at each sequence's first token, so every sequence is computed as alone in
        a row of its own (``training.data.pack``).
      readout: 'all' -> head output at every position, (B, T, V) or (B, T);
        'last' -> head output at each row's last valid token, (B, V), (B,) or (B, L)
        (rows with no valid token give an ignored value); 'hidden' -> (B, T, d).

    Returns:
      (output, updated cache or None).
    """
    cfg = self.config
    b, t = tokens.shape
    if valid is None:
      valid = jnp.ones((b, t), jnp.bool_)
    valid = valid.astype(jnp.bool_)
    offsets = jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1  # position within chunk
    dt = jnp.dtype(cfg.dtype)
    x = jnp.take(self.embed[...], tokens, axis=0).astype(dt)
    if cfg.embed_scale:
      x = x * jnp.asarray(cfg.d_model ** 0.5, dt)

    if segments is not None and cache is None:
      # A sequence's first token is where the id changes; its positions count the valid
      # tokens from there.
      first = jnp.concatenate([jnp.ones((b, 1), jnp.bool_), segments[:, 1:] != segments[:, :-1]],
                              axis=1)
      before = jax.lax.cummax(jnp.where(first, offsets - valid.astype(jnp.int32) + 1, 0), axis=1)
      offsets = offsets - before
    if cache is None:
      positions = jnp.maximum(offsets, 0)
      causal = jnp.tril(jnp.ones((t, t), jnp.bool_))
      attn_mask = causal[None] & valid[:, None, :]
      if segments is not None:
        attn_mask = attn_mask & (segments[:, :, None] == segments[:, None, :])
      index = None
      ks = vs = (None,) * cfg.num_layers
    else:
      if segments is not None:
        raise ValueError("segments (packed rows) are for training passes, without a cache.")
      if cache.size < t:
        raise ValueError(f"chunk of {t} tokens does not fit a cache of {cache.size} slots.")
      positions = cache.pos[:, None] + jnp.maximum(offsets, 0)
      index = cache.index
      mask = jax.lax.dynamic_update_slice(cache.mask, valid, (0, index))
      slots = jnp.arange(cache.size, dtype=jnp.int32)
      causal = slots[None, :] <= (index + jnp.arange(t, dtype=jnp.int32))[:, None]  # (T, S)
      attn_mask = causal[None] & mask[:, None, :]
      ks, vs = cache.k, cache.v
    local_mask = attn_mask
    if cfg.layer_types is not None and "sliding" in cfg.layer_types:
      # A row's filled slots hold its positions 0, 1, ... in order (holes are masked and
      # compaction keeps the order), so a slot's position is the count of filled slots before it.
      keys_at = positions if cache is None else jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1
      near = positions[:, :, None] - keys_at[:, None, :] < cfg.sliding_window
      local_mask = attn_mask & near

    rope_tabs = rope_tables(positions, cfg.dim_per_head, cfg.rope_theta, cfg.rope_scaling)
    new_k, new_v = [], []
    for i, (layer, kc, vc) in enumerate(zip(self.layers, ks, vs)):
      x, kc, vc = layer(x, rope_tabs, kc, vc, local_mask if cfg.is_sliding(i) else attn_mask,
                        index)
      new_k.append(kc)
      new_v.append(vc)
    x = self.final_norm(x)

    if cache is not None:
      n_new = valid.sum(axis=1, dtype=jnp.int32)
      cache = KVCache(k=tuple(new_k), v=tuple(new_v), mask=mask,
                      pos=cache.pos + n_new, index=index + t)

    if readout == "hidden":
      return x, cache
    if readout == "last":
      last = jnp.maximum(jnp.max(jnp.where(valid, jnp.arange(t)[None], -1), axis=1), 0)
      x = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    elif readout != "all":
      raise ValueError(f"readout={readout!r}: expected 'all', 'last' or 'hidden'.")
    return self.apply_head(x), cache
