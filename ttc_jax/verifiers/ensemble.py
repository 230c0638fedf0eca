"""Verifier ensembles: a trained verifier's score and the policy's confidence, combined.

On the embedded task every trained verifier ranks a problem's samples below the policy's own
confidence (within-problem AUC 0.66-0.72 against 0.84), yet the two see different things: the
verifiers read the whole solution with their own weights, the confidence only how surprised
the policy was by each token it wrote. An ensemble is a logistic regression over the logits of
its components' scores (a base verifier's, then confidence measures),

    score = sigmoid(bias + sum_i w_i * logit(s_i)),

fitted on the policy's samples of held-out *train* problems (``verifier_choice``; Weaver,
arXiv 2506.18203, combines weak verifiers the same way, with labels). The fit is pooled over
problems, so the score stays a probability of being right (best-of-N weighted sums it); a
problem's samples are ranked by the same linear score.

An ensemble is named ``ens_<base>``: ``ens_prm`` (the PRM's latest step and the confidence),
``ens_implicit_prm``, ``ens_dpo`` and ``ens_conf`` (the confidence measures alone: what the
combination of confidences gives without any trained model). In search it runs its base
verifier (charged as that verifier: its model, its tokens) and reads the confidence that came
with the sampled tokens (0 FLOPs); a step's score combines its components' scores of the step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from ttc_jax.verifiers import confidence

PREFIX = "ens_"
CONF = "conf"  # the base of the ensemble of confidence measures alone
_EPS = 1e-6  # scores are clipped to [eps, 1 - eps] before their logit


def name_of(base: str) -> str:
  return PREFIX + base


def base_of(name: str) -> str | None:
  """The base of an ensemble's name ('prm', 'implicit_prm', 'dpo', 'conf'); None for a name
  that is no ensemble."""
  return name[len(PREFIX):] if isinstance(name, str) and name.startswith(PREFIX) else None


def _logit(s) -> np.ndarray:
  s = np.clip(np.asarray(s, np.float64), _EPS, 1.0 - _EPS)
  return np.log(s) - np.log1p(-s)


@dataclasses.dataclass(frozen=True)
class Ensemble:
  """A fitted combination (see the module docstring): ``components`` are score names
  (:mod:`ttc_jax.verifiers.names`), ``weights`` their logits' coefficients."""

  components: tuple[str, ...]
  weights: tuple[float, ...]
  bias: float

  def __post_init__(self):
    if not self.components or len(self.weights) != len(self.components):
      raise ValueError(f"an ensemble of {list(self.components)} with weights "
                       f"{list(self.weights)}: expected one weight per component (>= 1).")

  def combine(self, scores: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble's score from its components' scores (same shapes; NaN where any is)."""
    if len(scores) != len(self.components):
      raise ValueError(f"{len(scores)} component scores for an ensemble of "
                       f"{list(self.components)}.")
    z = self.bias + sum(w * _logit(s) for w, s in zip(self.weights, scores))
    nan = np.any([np.isnan(np.asarray(s, np.float64)) for s in scores], axis=0)
    return np.where(nan, np.nan, 1.0 / (1.0 + np.exp(-z)))

  def to_json(self) -> dict:
    return {"components": list(self.components), "weights": [float(w) for w in self.weights],
            "bias": float(self.bias)}

  @classmethod
  def from_json(cls, d: dict) -> "Ensemble":
    return cls(tuple(d["components"]), tuple(float(w) for w in d["weights"]), float(d["bias"]))


def fit(features: dict[str, np.ndarray], correct: np.ndarray, c: float = 1.0) -> Ensemble:
  """The logistic regression of ``correct`` (one per sample) on the logits of ``features``
  (score name -> one score per sample; their order is the components'), L2-regularised
  (``c``: scikit-learn's inverse strength) on standardised logits."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.pipeline import make_pipeline  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top
  names = tuple(features)
  x = np.stack([_logit(features[k]) for k in names], axis=1)
  y = np.asarray(correct).astype(bool).reshape(-1)
  if x.shape[0] != y.size:
    raise ValueError(f"{x.shape[0]} scored samples but {y.size} labels.")
  if y.all() or not y.any():
    raise ValueError(f"a fit needs right and wrong samples; all {y.size} are "
                     f"{'right' if y.all() else 'wrong'}.")
  model = make_pipeline(StandardScaler(), LogisticRegression(C=c)).fit(x, y)
  scaler, lr = model.steps[0][1], model.steps[1][1]
  scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
  w = lr.coef_[0] / scale  # back to the raw logits
  return Ensemble(names, tuple(float(v) for v in w),
                  float(lr.intercept_[0] - np.sum(w * scaler.mean_)))


def cross_validated(features: dict[str, np.ndarray], correct: np.ndarray, groups: np.ndarray,
                    folds: int = 5, c: float = 1.0) -> np.ndarray:
  """Each sample's ensemble score from a fit on the other folds' problems (``groups``: each
  sample's problem; no problem in two folds): an honest estimate of the ensemble's ranking
  on problems it was not fitted on."""
  from sklearn.model_selection import GroupKFold  # pylint: disable=g-import-not-at-top
  y = np.asarray(correct).astype(bool).reshape(-1)
  out = np.full(y.size, np.nan)
  for train, held in GroupKFold(n_splits=folds).split(y, y, groups):
    e = fit({k: np.asarray(v)[train] for k, v in features.items()}, y[train], c)
    out[held] = e.combine([np.asarray(features[k])[held] for k in e.components])
  return out


@dataclasses.dataclass(frozen=True)
class _State:
  parts: tuple[Any, ...]


class EnsembleVerifier:
  """An :class:`Ensemble` as a :class:`~ttc_jax.verifiers.base.Verifier`: ``verifiers`` score
  its components (in order); at most one runs a model (the base: its architecture and tokens
  are the budget's), the others read the policy's confidence."""

  def __init__(self, ensemble: Ensemble, verifiers: Sequence[Any], name: str):
    if len(verifiers) != len(ensemble.components):
      raise ValueError(f"{len(verifiers)} verifiers for an ensemble of "
                       f"{list(ensemble.components)}.")
    self.ensemble, self.verifiers, self.name = ensemble, tuple(verifiers), name
    models = [i for i, v in enumerate(self.verifiers)
              if not isinstance(v, confidence.ConfidenceVerifier)]
    if len(models) > 1:
      raise ValueError(f"ensemble {name}: components {list(ensemble.components)} run "
                       f"{len(models)} models; at most one is charged as its base.")
    self._model = models[0] if models else None
    # The architecture the budget charges: the base's (the policy's with no base: 0 tokens).
    self.config = self.verifiers[self._model if models else 0].config

  def start(self, problems, tokens, valid, *, cache_size: int, max_step_tokens: int) -> _State:
    return _State(tuple(v.start(problems, tokens, valid, cache_size=cache_size,
                                max_step_tokens=max_step_tokens) for v in self.verifiers))

  def gather(self, state: _State, rows, compact: bool = False) -> _State:
    return _State(tuple(v.gather(s, rows, compact) for v, s in zip(self.verifiers, state.parts)))

  def extend(self, state: _State, tokens, valid, confidence=None) -> _State:
    return _State(tuple(v.extend(s, tokens, valid, confidence)
                        for v, s in zip(self.verifiers, state.parts)))

  def extend_scores(self, state: _State, tokens, valid, confidence=None
                    ) -> tuple[_State, np.ndarray]:
    out = [v.extend_scores(s, tokens, valid, confidence)
           for v, s in zip(self.verifiers, state.parts)]
    return _State(tuple(s for s, _ in out)), self.ensemble.combine([x for _, x in out])

  def scores(self, state: _State) -> np.ndarray:
    return self.ensemble.combine([v.scores(s) for v, s in zip(self.verifiers, state.parts)])

  def cache_index(self, state: _State) -> int:
    return max(v.cache_index(s) for v, s in zip(self.verifiers, state.parts))

  def tokens_fed(self, state: _State):
    if self._model is None:
      return self.verifiers[0].tokens_fed(state.parts[0])  # zeros: no tokens of its own
    return self.verifiers[self._model].tokens_fed(state.parts[self._model])

  def solution_step_scores(self, questions, rows, prompt_lengths, ends, *, batch_size: int
                           ) -> list[np.ndarray]:
    # The confidence measures share one forward pass of the policy (its token stats).
    conf = [v for v in self.verifiers if isinstance(v, confidence.ConfidenceVerifier)]
    stats = conf[0].full.token_confidence(rows, batch_size=batch_size, desc=self.name) \
        if conf else None
    parts = [v.step_scores_of(stats, prompt_lengths, ends)
             if isinstance(v, confidence.ConfidenceVerifier)
             else v.solution_step_scores(questions, rows, prompt_lengths, ends,
                                         batch_size=batch_size)
             for v in self.verifiers]
    return [self.ensemble.combine([p[i] for p in parts]) for i in range(len(rows))]

  def solution_tokens(self, questions, rows, prompt_lengths) -> np.ndarray:
    if self._model is None:
      return np.zeros(len(rows), np.int64)
    return self.verifiers[self._model].solution_tokens(questions, rows, prompt_lengths)
