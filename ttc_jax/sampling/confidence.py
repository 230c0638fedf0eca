"""The policy's confidence at each token it samples, from its own next-token distribution.

Two statistics of the full (unmodified: temperature 1, no top-k/p) distribution ``p`` a token
was drawn from, both larger where the model is surer:

* DeepConf's token confidence (Fu et al., arXiv 2508.15260): the negative mean log-probability
  of the ``TOP_K`` most likely tokens, ``-(1/k) sum_{j <= k} log p_(j)``;
* self-certainty (Kang et al., arXiv 2502.18581): the KL divergence from the uniform
  distribution, ``KL(U || p) = -log V - (1/V) sum_j log p_j``.

The sampling core computes them for every token it samples (the decode loop already holds
``log p``), and a full forward pass computes them for finished solutions
(:mod:`ttc_jax.verifiers.scoring`): the same function in both, so a confidence verifier scores
a solution the same during search as afterwards. Together with the sampled token's own
log-probability they are the inputs of :mod:`ttc_jax.verifiers.confidence`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TOP_K = 20  # DeepConf's k (its reference implementation's default)
STATS = ("topk", "certainty")  # the order of the last axis of :func:`token_confidence`


def token_confidence(logp: jax.Array) -> jax.Array:
  """(..., 2) [DeepConf top-k confidence, self-certainty] of each distribution in ``logp``
  (..., V) (log-probabilities, finite)."""
  v = logp.shape[-1]
  top = jax.lax.top_k(logp, min(TOP_K, v))[0]
  topk = -jnp.mean(top, axis=-1)
  certainty = -jnp.mean(logp, axis=-1) - jnp.log(jnp.float32(v))
  return jnp.stack([topk, certainty], axis=-1).astype(jnp.float32)
