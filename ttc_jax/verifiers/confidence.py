"""Confidence verifiers: the policy's own certainty as a verifier, with no training.

A solution is scored from what the policy felt while writing it, token by token
(:mod:`ttc_jax.sampling.confidence`): the sampled token's log-probability, DeepConf's top-k
confidence (Fu et al., arXiv 2508.15260) or self-certainty (Kang et al., arXiv 2502.18581).
A :class:`Measure` names one of those token confidences and how a solution's tokens are
summarised:

* ``mean``: over all its tokens (with ``logprob``: the mean log-probability);
* ``min``: its least confident token (with ``logprob``: the least likely token, the study's
  ``policy_likelihood`` reference);
* ``lowest_group``: DeepConf's lowest group confidence, the least confident window of
  ``window`` consecutive tokens (a solution shorter than the window is one group);
* ``bottom10``: DeepConf's bottom-10% group confidence, the mean of the least confident
  tenth of those windows (at least one);
* ``tail``: DeepConf's tail confidence, the mean over its last ``tail`` tokens.

The summary is mapped to [0, 1] so that search takes it as it takes a PRM's probability
(weighted voting sums it, particle filtering reads its logit); the map is monotone, so every
ranking is the measure's own: ``exp`` of a log-probability summary (a geometric-mean
probability), ``c / (1 + c)`` of the non-negative ones (its logit is ``log c``).

A step's score is the score of the solution so far, up to the step's last token, so the
solution's score is its last step's; a solution with no token scores 0 (as one with no step does:
:func:`ttc_jax.verifiers.scoring.aggregate_steps`).

During search it reads the confidence the sampling core returned with the tokens it sampled:
no model call, none of its own tokens, so the budget charges it 0 FLOPs. A finished solution
without those numbers is scored by one forward pass of the policy
(:meth:`ttc_jax.verifiers.scoring.Scorer.token_confidence`), which computes them with the
same function.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from ttc_jax.models.transformer import Transformer
from ttc_jax.sampling import confidence as confidence_lib
from ttc_jax.verifiers.scoring import Scorer

TOKEN_CONFIDENCES = ("logprob",) + confidence_lib.STATS  # the columns of a (T, 3) stats array
AGGREGATIONS = ("mean", "min", "lowest_group", "bottom10", "tail")
PREFIX = "conf"
_NAME = re.compile(rf"^{PREFIX}_({'|'.join(TOKEN_CONFIDENCES)})_({'|'.join(AGGREGATIONS)})$")


@dataclasses.dataclass(frozen=True)
class Measure:
  """A token confidence and its summary over a solution (see the module docstring)."""

  token: str = "logprob"
  aggregation: str = "mean"
  window: int = 8  # tokens per group (DeepConf: 1024-2048 of long reasoning; arith's ~40)
  tail: int = 16  # tokens of the tail

  def __post_init__(self):
    if self.token not in TOKEN_CONFIDENCES:
      raise ValueError(f"token confidence {self.token!r}: expected one of {TOKEN_CONFIDENCES}.")
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"confidence aggregation {self.aggregation!r}: expected one of "
                       f"{AGGREGATIONS}.")
    for field in ("window", "tail"):
      value = getattr(self, field)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"confidence {field} {value!r}: expected an integer >= 1.")

  @property
  def name(self) -> str:
    """The score's name in the study's tables (e.g. 'conf_topk_lowest_group')."""
    return f"{PREFIX}_{self.token}_{self.aggregation}"

  @classmethod
  def from_name(cls, name: str, **kwargs) -> "Measure":
    m = _NAME.match(name)
    if m is None:
      raise ValueError(f"confidence verifier {name!r}: expected {PREFIX}_<token>_<aggregation> "
                       f"with token one of {TOKEN_CONFIDENCES} and aggregation one of "
                       f"{AGGREGATIONS}.")
    return cls(token=m.group(1), aggregation=m.group(2), **kwargs)

  def prefix_scores(self, stats: np.ndarray, last: int | None = None) -> np.ndarray:
    """The score of every prefix of a solution whose tokens have ``stats`` (T, 3), or of its
    ``last`` longest prefixes only (search needs the new tokens' scores, not the old ones')."""
    x = np.asarray(stats, np.float64)[:, TOKEN_CONFIDENCES.index(self.token)]
    t = x.size
    last = t if last is None else min(last, t)
    if last <= 0:
      return np.zeros(0, np.float64)
    summary = _prefix_summary(x, self.aggregation, self.window, self.tail)[t - last:] \
        if self.aggregation != "bottom10" else _bottom10(x, self.window, t - last)
    if self.token == "logprob":
      return np.exp(summary)
    c = np.maximum(summary, 0.0)  # >= 0 up to float rounding
    return c / (1.0 + c)

  def score(self, stats: np.ndarray) -> float:
    """The score of a whole solution (its last prefix; 0 with no token)."""
    s = self.prefix_scores(stats, last=1)
    return float(s[-1]) if s.size else 0.0


def _prefix_summary(x: np.ndarray, how: str, window: int, tail: int) -> np.ndarray:
  """``how`` of x[:t] for every t = 1..len(x)."""
  t = np.arange(1, x.size + 1)
  cs = np.concatenate([[0.0], np.cumsum(x)])
  if how == "mean":
    return cs[1:] / t
  if how == "min":
    return np.minimum.accumulate(x)
  if how == "tail":
    return (cs[1:] - cs[np.maximum(t - tail, 0)]) / np.minimum(t, tail)
  if how != "lowest_group":
    raise ValueError(f"no prefix summary {how!r} here (bottom10: _bottom10).")
  groups = _groups(x, window)
  # Before a full window there is one group, the prefix; after, the full windows only.
  full = np.where(t >= window, groups, np.inf)
  return np.where(t >= window, np.minimum.accumulate(full), groups)


def _groups(x: np.ndarray, window: int) -> np.ndarray:
  """The mean of the window ending at each token (of the whole prefix while it is shorter)."""
  t = np.arange(1, x.size + 1)
  cs = np.concatenate([[0.0], np.cumsum(x)])
  return (cs[1:] - cs[np.maximum(t - window, 0)]) / np.minimum(t, window)


def _bottom10(x: np.ndarray, window: int, start: int) -> np.ndarray:
  """DeepConf's bottom-10% group confidence of the prefixes x[:i + 1], i >= ``start`` (each
  needs its own sort: computed for the prefixes asked for only)."""
  groups = _groups(x, window)
  out = np.empty(x.size - start)
  for i in range(start, x.size):
    g = groups[window - 1:i + 1] if i + 1 >= window else groups[i:i + 1]
    k = max(1, int(np.ceil(0.1 * g.size)))
    out[i - start] = np.partition(g, k - 1)[:k].mean()
  return out


def step_scores(measure: Measure, stats: Sequence[np.ndarray], prompt_lengths: Sequence[int],
                ends: Sequence[Sequence[int]]) -> list[np.ndarray]:
  """Each solution's step scores by ``measure``: the score of its solution tokens (after the
  prompt) up to each step's end, from its row's per-token stats (``stats[i]``: (len, 3), as
  :meth:`Scorer.token_confidence` returns them, of whichever model scored it)."""
  out = []
  for s, p, e in zip(stats, prompt_lengths, ends):
    prefix = measure.prefix_scores(np.asarray(s)[p:])
    e = np.asarray(e, np.int64) - p
    if np.any(e < 0) or np.any(e >= prefix.size):
      raise ValueError(f"step ends {list(e + p)} outside the solution (tokens {p}.."
                       f"{p + prefix.size - 1}).")
    out.append(prefix[e])
  return out


@dataclasses.dataclass(frozen=True)
class _State:
  """Per row of a search: the token confidences of its solution so far."""

  stats: tuple[np.ndarray, ...]


class ConfidenceVerifier:
  """The policy's confidence as a :class:`~ttc_jax.verifiers.base.Verifier` (see the module
  docstring). ``policy``: the policy model, read only to score finished solutions without
  their sampled confidences."""

  def __init__(self, measure: Measure, policy: Transformer, pad_id: int, mesh=None):
    self.measure = measure
    self.policy, self.pad_id, self.mesh = policy, pad_id, mesh
    # The architecture the budget would charge: it is charged no token (tokens_fed is 0).
    self.config = policy.config
    self._full: Scorer | None = None

  @property
  def name(self) -> str:
    return self.measure.name

  @property
  def full(self) -> Scorer:
    """The policy's full-pass scorer (kept: its compiled functions are reused)."""
    if self._full is None:
      self._full = Scorer(self.policy, mesh=self.mesh, pad_id=self.pad_id)
    return self._full

  # --- search ------------------------------------------------------------------------------
  def start(self, problems: Sequence, tokens: np.ndarray, valid: np.ndarray, *,
            cache_size: int, max_step_tokens: int) -> _State:
    del tokens, valid, cache_size, max_step_tokens  # the prompt is not the policy's answer
    return _State(tuple(np.zeros((0, len(TOKEN_CONFIDENCES)), np.float32) for _ in problems))

  def gather(self, state: _State, rows, compact: bool = False) -> _State:
    del compact  # no cache
    return _State(tuple(state.stats[int(r)] for r in np.asarray(rows).reshape(-1)))

  def extend(self, state: _State, tokens, valid, confidence=None) -> _State:
    return self._extend(state, tokens, valid, confidence)[0]

  def extend_scores(self, state: _State, tokens, valid, confidence=None
                    ) -> tuple[_State, np.ndarray]:
    return self._extend(state, tokens, valid, confidence)

  def _extend(self, state: _State, tokens, valid, confidence) -> tuple[_State, np.ndarray]:
    """Each row's stats grown by its valid new tokens; the score after each new token (NaN at
    invalid ones)."""
    if confidence is None:
      raise ValueError("a confidence verifier reads the confidence the sampling core returned "
                       "with the tokens (SampleOutput.token_stats); none was passed.")
    tokens, valid = np.asarray(tokens), np.asarray(valid, bool)
    confidence = np.asarray(confidence, np.float32)
    rows, width = valid.shape
    if len(state.stats) != rows or confidence.shape != (rows, width, len(TOKEN_CONFIDENCES)):
      raise ValueError(f"confidence of shape {confidence.shape} for {len(state.stats)} rows of "
                       f"{width} tokens.")
    new, scores = [], np.full((rows, width), np.nan)
    for r in range(rows):
      added = confidence[r, valid[r]]
      stats = np.concatenate([state.stats[r], added])
      new.append(stats)
      if added.shape[0]:
        scores[r, np.nonzero(valid[r])[0]] = self.measure.prefix_scores(stats, last=len(added))
    return _State(tuple(new)), scores

  def scores(self, state: _State) -> np.ndarray:
    return np.asarray([self.measure.score(s) for s in state.stats], np.float64)

  def tokens_fed(self, state: _State) -> np.ndarray:
    return np.zeros(len(state.stats), np.int64)  # no tokens of its own: 0 FLOPs

  def cache_index(self, state: _State) -> int:
    del state
    return 0  # no cache

  # --- finished solutions -------------------------------------------------------------------
  def solution_step_scores(self, questions: Sequence[str], rows: Sequence[Sequence[int]],
                           prompt_lengths: Sequence[int], ends: Sequence[Sequence[int]], *,
                           batch_size: int) -> list[np.ndarray]:
    del questions
    stats = self.full.token_confidence(rows, batch_size=batch_size, desc=self.name)
    return self.step_scores_of(stats, prompt_lengths, ends)

  def step_scores_of(self, stats: Sequence[np.ndarray], prompt_lengths: Sequence[int],
                     ends: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Each solution's step scores from its rows' per-token stats (``stats[i]``: (len, 3) over
    prompt and solution, as :meth:`Scorer.token_confidence` returns them)."""
    return step_scores(self.measure, stats, prompt_lengths, ends)

  def solution_tokens(self, questions: Sequence[str], rows: Sequence[Sequence[int]],
                      prompt_lengths: Sequence[int]) -> np.ndarray:
    del questions, prompt_lengths
    return np.zeros(len(rows), np.int64)  # what sampling returned: nothing more is read
