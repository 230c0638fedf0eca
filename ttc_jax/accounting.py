"""FLOPs arithmetic of the study: one small module, unit-tested (tests/test_accounting.py).

Every FLOPs number of the study (search budgets, revision chains, the pretraining
versus inference exchange) comes from here.

The parameter count N (:class:`ModelCost`): the parameters that take part in a matrix
multiply on every token, i.e. every parameter except the input embedding table (a
lookup, no multiply-adds). That is the non-embedding N of Kaplan et al. 2020 (and of
2N per token in Snell et al. 2024) plus the output head: Kaplan et al. list the
de-embedding (2 d_model n_vocab per token) separately and drop it as subleading, but
it is a matmul on every token, and at this codebase's scale (d_model 128, vocab 64)
nothing is gained by leaving it out. With tied embeddings the shared matrix is counted
once, as the head. RMSNorm gains are counted too (a handful of parameters, one
multiply each: negligible either way). In terms of
:meth:`ttc_jax.models.transformer.TransformerConfig.num_params`:
N = num_params(include_embeddings=False) + d_model x vocab_size for an LM head, and
N = num_params(include_embeddings=False) for a value head (PRM / ORM).

Forward FLOPs (:func:`forward_flops`; Kaplan et al. 2020, Table 1): a token at
position t (0-based) of its row, with a KV cache, costs

  C(t) = 2 N + 4 n_layer d_attn (t + 1)

2 N for the matmuls (a multiply and an add per parameter), and per layer
2 d_attn (t + 1) for the attention logits Q K^T over the t + 1 positions it attends to
(itself included) plus 2 d_attn (t + 1) for the weighted sum of the values (A V), with
d_attn = num_heads x head_dim (grouped-query attention shares keys and values between
heads, not the query-key products). Softmax, norms, RoPE and activations are left out
(O(d_model) or O(t x heads) per token: small against these). The tokens at positions
[start, stop) of one row therefore cost, in closed form,

  C[start, stop) = 2 N (stop - start) + 2 n_layer d_attn (stop (stop + 1) - start (start + 1)).

Averaged over a full window of n tokens this is 2 N + 2 n_layer d_attn (n + 1) per token:
Kaplan's C_forward = 2 N + 2 n_layer n_ctx d_attn. 2 N x tokens alone undercounts long
contexts by the attention term, which grows quadratically with the row's length. Each
token is counted once, at its own position (the ideal cached forward): a row encoded
again from scratch (e.g. an ORM rescoring whole sequences) pays its positions again.

Training FLOPs (:func:`training_flops`): the backward pass costs about twice the
forward (gradients with respect to the activations and to the weights, each about a
forward), so training costs 3 x forward: 6 N D for D tokens without attention
(Kaplan's C = 6 N D), 6 N D + 6 n_layer d_attn D (n + 1) with the attention of rows of
n tokens.

The pretraining-versus-inference exchange (Snell et al. 2024, section 7): a model
with M times the parameters, pretrained on D_pretrain tokens and serving D_inference
tokens, costs 6 M N D_pretrain + 2 M N D_inference FLOPs; the small model with X
generations per query costs 6 N D_pretrain + 2 N D_inference X. They are equal at
X = M + 3 (M - 1) / R with R = D_inference / D_pretrain.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:  # the arithmetic needs no jax: the config is only read
  from ttc_jax.models.transformer import TransformerConfig

# The paper's ratios of inference to pretraining tokens (section 7, Figure 9).
R_POINTS = (0.16, 0.79, 22.0)

# A token position or count: a Python / numpy integer or an integer array.
Positions = Union[int, np.integer, np.ndarray]


def _positive_int(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name}={value!r}: expected an integer >= 1.")
  return int(value)


@dataclasses.dataclass(frozen=True)
class ModelCost:
  """What the FLOPs of a decoder depend on (see the module docstring).

  params: N, the parameters in matmuls on every token: all but the input
    embedding table (the output head included).
  num_layers: decoder blocks (n_layer).
  attn_width: num_heads x head_dim (d_attn), the width of the queries.
  """

  params: int
  num_layers: int
  attn_width: int

  def __post_init__(self):
    for name in ("params", "num_layers", "attn_width"):
      object.__setattr__(self, name, _positive_int(getattr(self, name), f"ModelCost.{name}"))

  @classmethod
  def from_config(cls, config: "TransformerConfig") -> "ModelCost":
    """The cost of a :class:`ttc_jax.models.transformer.TransformerConfig` model:
    N = non-embedding parameters + the LM head (d_model x vocab_size) if it has one."""
    head = config.d_model * config.vocab_size if config.head == "lm" else 0
    return cls(params=config.num_params(include_embeddings=False) + head,
               num_layers=config.num_layers,
               attn_width=config.num_heads * config.dim_per_head)

  def to_dict(self) -> dict:
    """JSON-able form (stored next to token counts, e.g. a revision sweep's params.json)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d) -> "ModelCost":
    """Inverse of :meth:`to_dict`; an existing ModelCost is returned as is."""
    if isinstance(d, cls):
      return d
    fields = {"params", "num_layers", "attn_width"}
    if not isinstance(d, dict) or set(d) != fields:
      raise ValueError(f"model cost {d!r}: expected a dict with exactly the keys "
                       f"{sorted(fields)} (ModelCost.to_dict()).")
    return cls(**d)


def _range(start: Positions, stop: Positions) -> tuple[np.ndarray, np.ndarray]:
  """(start, stop) as float64 arrays, checked: integers with 0 <= start <= stop."""
  out = []
  for name, x in (("start", start), ("stop", stop)):
    a = np.asarray(x)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
      raise ValueError(f"{name}={x!r}: expected integer token positions.")
    out.append(a)
  s, e = out
  if np.any(s < 0):
    raise ValueError(f"start={start!r}: expected positions >= 0.")
  if np.any(e < s):
    raise ValueError(f"[start, stop)=[{start!r}, {stop!r}): expected stop >= start "
                     "(a range of token positions).")
  return s.astype(np.float64), e.astype(np.float64)


def _result(x: np.ndarray):
  return float(x) if np.ndim(x) == 0 else x


def dense_flops(cost: ModelCost, start: Positions, stop: Positions):
  """The matmul part of :func:`forward_flops`: 2 N (stop - start)."""
  s, e = _range(start, stop)
  return _result(2.0 * cost.params * (e - s))


def attention_flops(cost: ModelCost, start: Positions, stop: Positions):
  """The attention part of :func:`forward_flops`: the sum over t in [start, stop) of
  4 n_layer d_attn (t + 1) = 2 n_layer d_attn (stop (stop + 1) - start (start + 1))."""
  s, e = _range(start, stop)
  return _result(2.0 * cost.num_layers * cost.attn_width * (e * (e + 1.0) - s * (s + 1.0)))


def forward_flops(cost: ModelCost, start: Positions, stop: Positions):
  """Forward FLOPs of the tokens at positions [start, stop) of one row:

    C[start, stop) = 2 N (stop - start) + 2 n_layer d_attn (stop (stop + 1) - start (start + 1)),

  the sum over t of C(t) = 2 N + 4 n_layer d_attn (t + 1) (see the module docstring).
  ``start`` is how many tokens the row already holds (its prompt and earlier steps,
  in the KV cache); ``stop - start`` the tokens run now. Integers or integer arrays
  (broadcast; an array in, an array out).

  Raises:
    ValueError: positions that are not integers, start < 0 or stop < start.
  """
  s, e = _range(start, stop)
  dense = 2.0 * cost.params * (e - s)
  attention = 2.0 * cost.num_layers * cost.attn_width * (e * (e + 1.0) - s * (s + 1.0))
  return _result(dense + attention)


def training_flops(cost: ModelCost, tokens: float, seq_len: int | None = None) -> float:
  """Training FLOPs of ``tokens`` tokens: 3 x forward (the backward pass is about two
  forwards), i.e. 6 N D without attention (``seq_len`` None: Kaplan's C = 6 N D) and,
  for rows of ``seq_len`` tokens (positions 0 .. seq_len - 1),
  3 x D / seq_len x C[0, seq_len) = 6 N D + 6 n_layer d_attn D (seq_len + 1).

  Raises:
    ValueError: tokens < 0 or seq_len not an integer >= 1.
  """
  d = float(tokens)
  if not d >= 0.0:
    raise ValueError(f"tokens={tokens!r}: expected a token count >= 0.")
  if seq_len is None:
    return 6.0 * cost.params * d
  n = _positive_int(seq_len, "seq_len")
  return 3.0 * d / n * forward_flops(cost, 0, n)


def pretraining_flops(model: "ModelCost | TransformerConfig", train_tokens: float,
                      seq_len: int | None = None) -> float:
  """FLOPs that trained ``model`` (a ModelCost or a TransformerConfig) on
  ``train_tokens`` tokens: :func:`training_flops` (6 N D; attention of rows of
  ``seq_len`` tokens included if given)."""
  cost = model if isinstance(model, ModelCost) else ModelCost.from_config(model)
  return training_flops(cost, train_tokens, seq_len)


def matched_generations(param_ratio: float, r: float) -> float:
  """Generations per query of the small model that spend the FLOPs of the model with
  ``param_ratio`` (M) times its parameters at one generation: M + 3 (M - 1) / R."""
  m, r = float(param_ratio), float(r)
  if not m >= 1.0:
    raise ValueError(f"param_ratio={param_ratio!r}: expected a number >= 1 (large / small).")
  if not r > 0.0:
    raise ValueError(f"r={r!r}: expected D_inference / D_pretrain > 0.")
  return m + 3.0 * (m - 1.0) / r


def prediction_flops(policy: ModelCost, predictor: ModelCost, rows: np.ndarray,
                     predictor_rows: np.ndarray) -> tuple[float, float]:
  """FLOPs per problem of predicting difficulty from samples: the policy writing each
  sample (``rows``: (problems, samples) tokens, prompt and generation) and the predictor's
  model reading it (``predictor_rows``: its own tokens of each). (policy, predictor)."""
  problems = len(rows)
  pol = float(np.sum(forward_flops(policy, 0, np.asarray(rows)))) / problems
  ver = float(np.sum(forward_flops(predictor, 0, np.asarray(predictor_rows)))) / problems
  return pol, ver
