"""LM-head verifiers: a fine-tuned copy of the policy scores a solution by how much more it
likes the solution than the policy does.

A model pi trained from the policy pi_ref on the policy's own samples with outcome labels
defines the implicit reward of a solution prefix y_<=t,

    q_t = beta * sum_{i <= t} [log pi(y_i | x, y_<i) - log pi_ref(y_i | x, y_<i)],

(Rafailov et al. 2023). Two objectives train pi (``ttc_jax.training.trainer``):

* the implicit PRM (Yuan et al., "Free Process Rewards without Process Labels", arXiv
  2412.01981): cross-entropy of sigmoid(q_T) against the sample's correctness; q_t is then
  a process value without a single step label, and q_t - q_{t-1} the process reward;
* DPO on pairs of a correct and an incorrect sample of the same train problem, as the
  V-STaR verifier (Hosseini et al., arXiv 2402.06457).

A step's score is sigmoid(q_t) at the step's last token, so the solution's score is its last
step's (the implicit outcome reward) and search takes it as it takes a PRM's value.

During search the verifier keeps pi's KV cache over the policy's tokens (one forward of a
policy-sized model per token, as a value-head PRM) and reads pi_ref's log-probabilities from
what the sampling core returned with the sampled tokens (``SampleOutput.token_stats``): the
reference costs no model call. A finished solution is scored by one full forward pass of
each model.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from ttc_jax.models.transformer import Transformer
from ttc_jax.sampling.cached import CachedModel
from ttc_jax.sampling.cached import DecodeState
from ttc_jax.verifiers.scoring import Scorer

OBJECTIVES = ("implicit_prm", "dpo")  # the training objectives (and the verifiers' names)


@jax.jit
def _new_token_logprobs(prev_logits, every, tokens, valid):
  """(B, T) log pi(tokens[:, j] | what precedes it) at valid j: the distribution that
  predicts a token is the model's output at the row's previous valid token of this chunk,
  or ``prev_logits`` (the row's last output before the chunk) for its first one."""
  t = tokens.shape[1]
  pos = jnp.where(valid, jnp.arange(t)[None], -1)
  # The previous valid position before j (-1: none in this chunk).
  prev = jax.lax.cummax(pos, axis=1)
  prev = jnp.concatenate([jnp.full_like(prev[:, :1], -1), prev[:, :-1]], axis=1)
  # log p = logit of the token - logsumexp, gathered per (row, position): no second
  # (B, T, vocabulary) array beside the model's output.
  every = every.astype(jnp.float32)
  prev_logits = prev_logits.astype(jnp.float32)
  rows = jnp.arange(tokens.shape[0])[:, None]
  src = jnp.maximum(prev, 0)
  in_chunk = every[rows, src, tokens] - jax.nn.logsumexp(every, axis=-1)[rows, src]
  before = (jnp.take_along_axis(prev_logits, tokens, axis=1)
            - jax.nn.logsumexp(prev_logits, axis=-1)[:, None])
  lp = jnp.where(prev >= 0, in_chunk, before)
  return jnp.where(valid, lp, 0.0)


class IncrementalLogprobs(CachedModel):
  """An LM bound to a mesh: prefill / extend / gather from :class:`CachedModel`, plus the
  log-probability of each token fed (teacher forcing on its KV cache)."""

  def __init__(self, model: Transformer, mesh=None, pad_id: int = 0):
    if model.config.head != "lm":
      raise ValueError(f"token log-probabilities need an LM head; got head={model.config.head!r}.")
    super().__init__(model, mesh=mesh, pad_id=pad_id)

  def extend_logprobs(self, state: DecodeState, tokens, valid
                      ) -> tuple[DecodeState, np.ndarray]:
    """Like :meth:`extend`; also returns (num_rows, T) log p(token | all before it) at each
    valid new token (0 at the others)."""
    tokens = np.asarray(tokens, np.int32)
    valid = np.asarray(valid, bool)
    prev = jnp.copy(state.logits)  # extend donates the state
    new, every = self.extend_outputs(state, tokens, valid)
    bp = new.padded_rows
    lp = _new_token_logprobs(prev, every, self._put_rows(self._pad_rows(tokens, bp, self.pad_id)),
                             self._put_rows(self._pad_rows(valid, bp, False)))
    return new, np.asarray(lp)[:state.num_rows]


@dataclasses.dataclass(frozen=True)
class _State:
  """Per row of a search: pi's decode state and the implicit reward q so far."""

  decode: DecodeState
  q: np.ndarray  # (rows,) float64


class LMVerifierBase:
  """What every verifier backed by one LM over the policy's tokens shares (the implicit-reward
  and the likelihood verifiers): its model, fed the policy's tokens in the policy's slots
  (``cached``: teacher forcing on its KV cache; ``full``: one forward pass of a finished
  row), charged its forward over every token it reads."""

  def __init__(self, model: Transformer, pad_id: int, name: str, mesh=None):
    self.model, self.pad_id, self.name, self.mesh = model, pad_id, name, mesh
    self.config = model.config  # what the budget charges per token it reads
    self._cached: IncrementalLogprobs | None = None
    self._full: Scorer | None = None

  @property
  def cached(self) -> IncrementalLogprobs:
    if self._cached is None:
      self._cached = IncrementalLogprobs(self.model, mesh=self.mesh, pad_id=self.pad_id)
    return self._cached

  @property
  def full(self) -> Scorer:
    if self._full is None:
      self._full = Scorer(self.model, mesh=self.mesh, pad_id=self.pad_id)
    return self._full

  def cache_index(self, state) -> int:
    return int(state.decode.cache.index)

  def tokens_fed(self, state) -> None:
    del state
    return None  # it reads the policy's tokens, at the policy's positions

  def solution_tokens(self, questions: Sequence[str], rows: Sequence[Sequence[int]],
                      prompt_lengths: Sequence[int]) -> np.ndarray:
    del questions, prompt_lengths
    return np.asarray([len(r) for r in rows], np.int64)


class ImplicitRewardVerifier(LMVerifierBase):
  """An LM-head verifier (see the module docstring): ``model`` is pi (trained from the
  policy), ``reference`` pi_ref (the policy), ``beta`` the objective's."""

  def __init__(self, model: Transformer, reference: Transformer, beta: float, pad_id: int,
               name: str = "implicit_prm", mesh=None):
    for role, m in (("model", model), ("reference", reference)):
      if m.config.head != "lm":
        raise ValueError(f"an implicit-reward verifier's {role} needs an LM head; got "
                         f"head={m.config.head!r}.")
    if model.config.vocab_size != reference.config.vocab_size:
      raise ValueError(f"the verifier's vocabulary ({model.config.vocab_size}) is not its "
                       f"reference's ({reference.config.vocab_size}).")
    if not beta > 0:
      raise ValueError(f"beta={beta!r}: expected > 0.")
    # The budget charges pi's forward per policy token (pi_ref's come with sampling).
    super().__init__(model, pad_id, name, mesh)
    self.reference, self.beta = reference, float(beta)
    self._ref_full: Scorer | None = None

  @property
  def reference_full(self) -> Scorer:
    if self._ref_full is None:
      self._ref_full = Scorer(self.reference, mesh=self.mesh, pad_id=self.pad_id)
    return self._ref_full

  def _score(self, q) -> np.ndarray:
    return scipy.special.expit(np.asarray(q, np.float64))

  # --- search ------------------------------------------------------------------------------
  def start(self, problems: Sequence, tokens: np.ndarray, valid: np.ndarray, *,
            cache_size: int, max_step_tokens: int) -> _State:
    del problems, max_step_tokens  # it reads the policy's prompt tokens, in the policy's slots
    decode = self.cached.prefill(tokens, valid, cache_size=cache_size)
    return _State(decode, np.zeros(decode.num_rows, np.float64))

  def gather(self, state: _State, rows, compact: bool = False) -> _State:
    rows = np.asarray(rows).reshape(-1)
    return _State(self.cached.gather(state.decode, rows, compact=compact), state.q[rows])

  def extend(self, state: _State, tokens, valid, confidence=None) -> _State:
    return self._extend(state, tokens, valid, confidence)[0]

  def extend_scores(self, state: _State, tokens, valid, confidence=None
                    ) -> tuple[_State, np.ndarray]:
    return self._extend(state, tokens, valid, confidence)

  def _extend(self, state: _State, tokens, valid, confidence) -> tuple[_State, np.ndarray]:
    """pi fed each row's valid new tokens; q grown by beta * (log pi - log pi_ref) of each;
    the score after each new token (NaN at invalid ones)."""
    if confidence is None:
      raise ValueError(f"the {self.name} verifier reads the policy's log-probabilities of the "
                       "tokens, which the sampling core returns with them "
                       "(SampleOutput.token_stats); none was passed.")
    tokens = np.asarray(tokens, np.int32)
    valid = np.asarray(valid, bool)
    rows, width = valid.shape
    confidence = np.asarray(confidence, np.float32)
    if confidence.ndim != 3 or confidence.shape[:2] != (rows, width):
      raise ValueError(f"confidence of shape {confidence.shape} for {rows} rows of {width} "
                       "tokens.")
    decode, lp = self.cached.extend_logprobs(state.decode, tokens, valid)
    delta = np.where(valid, lp.astype(np.float64) - confidence[..., 0], 0.0) * self.beta
    q = state.q[:, None] + np.cumsum(delta, axis=1)
    scores = np.where(valid, self._score(q), np.nan)
    return _State(decode, q[:, -1] if width else state.q.copy()), scores

  def scores(self, state: _State) -> np.ndarray:
    return self._score(state.q)

  # --- finished solutions -------------------------------------------------------------------
  def solution_step_scores(self, questions: Sequence[str], rows: Sequence[Sequence[int]],
                           prompt_lengths: Sequence[int], ends: Sequence[Sequence[int]], *,
                           batch_size: int) -> list[np.ndarray]:
    del questions
    q = self.prefix_rewards(rows, prompt_lengths, batch_size=batch_size)
    out = []
    for qi, p, e in zip(q, prompt_lengths, ends):
      e = np.asarray(e, np.int64) - p
      if np.any(e < 0) or np.any(e >= qi.size):
        raise ValueError(f"step ends {list(e + p)} outside the solution (tokens {p}.."
                         f"{p + qi.size - 1}).")
      out.append(self._score(qi[e]))
    return out

  def prefix_rewards(self, rows: Sequence[Sequence[int]], prompt_lengths: Sequence[int], *,
                     batch_size: int) -> list[np.ndarray]:
    """q_t at every solution token t of each row (index 0: the first solution token)."""
    mine = self.full.token_confidence(rows, batch_size=batch_size, desc=f"{self.name} pi")
    ref = self.reference_full.token_confidence(rows, batch_size=batch_size,
                                               desc=f"{self.name} pi_ref")
    return [self.beta * np.cumsum(m[p:, 0].astype(np.float64) - r[p:, 0])
            for m, r, p in zip(mine, ref, prompt_lengths)]
