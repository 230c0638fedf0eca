"""What the sampling core draws and where a row stops: :class:`SamplingParams` (temperature,
top-k, top-p, token budget, stop at the step delimiter), :class:`SpecialIds` (EOS, step,
split-delimiter and suppressed ids), the logits processing and token choice the decode loop
applies each step, and the per-row keys every draw comes from (:func:`row_keys`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

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

  Row i uses ``fold_in(keys[i], step)`` (``step``: a scalar, or (B,) per row: the tokens
  the row has drawn before); greedy ignores the keys.
  """
  if sp.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, 0 if jnp.ndim(step) else None))(
      keys, step)
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
