"""The registry of random streams: every random draw of ttc_jax comes from one of these.

A row's key is ``row_keys(seed, stream, ...ids)`` (see :func:`keys`): the stream
separates the uses of the policy (pass@1 samples, MC-label samples, their
rollouts, search...), the ids say which problem, sample and round the row is.
Two uses never share a stream, so no sample is silently reused as another's.
The numbers are part of every stored result: never renumber an existing stream;
add new ones at the end.
"""

from __future__ import annotations

import numpy as np

from ttc_jax.sampling.core import row_keys

STREAMS = {
    "pass_at_1": 1,  # policy samples on test problems (difficulty, verifier evaluation)
    "label_samples": 2,  # policy samples on train problems (MC-labelled PRM / ORM data)
    "rollouts": 3,  # MC rollouts from each step prefix of those samples
    "verifier_eval": 4,  # (unused since the verifier evaluation scores the pass@1 samples)
    "auc_samples": 5,  # held-out samples for the PRM's step AUC
    "auc_rollouts": 6,  # their MC rollouts
    "search": 7,  # search: row_keys(seed, 7, problem, slot, round, run)
    "resample": 8,  # particle filtering's resampling: generator(seed, 8, problem, round, run)
    "revision_samples": 9,  # policy answers to train problems for the revision data
    "revision_pairs": 10,  # their trajectories' draws: generator(seed, 10, split, problem)
    "revision_chains": 11,  # revision chains: row_keys(seed, 11, split, problem, chain, step, run)
    "large_policy_samples": 12,  # the exchange's larger policy on test problems
    # The synthetic verifier's noise: generator(seed, 13, split, problem, hash of the prefix)
    "synthetic_verifier": 13,
    "axis_samples": 14,  # policy samples on train problems that calibrate its noise
    "choice_samples": 15,  # policy samples on held-out train problems: the verifier choice
    "verifier_samples": 16,  # policy samples on train problems: the LM-head verifiers' data
    # Revision chains of each revision-model checkpoint on held-out train problems (its choice)
    "revision_choice": 17,
    # On-policy rounds of the revision model (RISE): its own chains on its train problems,
    # row_keys(seed, 18, split, problem, chain, step, round), and their trajectories' draws,
    # generator(seed, 19, split, problem, round)
    "revision_rounds": 18,
    "revision_round_pairs": 19,
    # Policy samples on held-out train problems: adaptive allocation's parameters are chosen on
    # them (its test pool is the pass@1 samples)
    "allocation_samples": 20,
    # Distillation (make distill): each round's model on its train problems,
    # row_keys(seed, 21, split, problem, sample, round), and on the test problems (the same
    # keys every round: paired), row_keys(seed, 22, split, problem, sample)
    "distill_samples": 21,
    "distill_eval": 22,
    # Search then revise: the revision model's chain after a search's best candidate,
    # row_keys(seed, 23, split, problem, chain, step, search seed)
    "hybrid_chains": 23,
}
SPLIT_IDS = {"train": 0, "test": 1}


def stream_id(name: str) -> int:
  if name not in STREAMS:
    raise ValueError(f"unknown random stream {name!r}; known: {sorted(STREAMS)} "
                     "(add new streams to ttc_jax/sampling/streams.py).")
  return STREAMS[name]


def split_id(split: str) -> int:
  if split not in SPLIT_IDS:
    raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_IDS)}.")
  return SPLIT_IDS[split]


def generator(seed: int, stream: str, *ids: int) -> np.random.Generator:
  """A host-side numpy generator for draws made outside the model (e.g. resampling),
  seeded by (seed, stream, *ids) like the row keys."""
  return np.random.default_rng([int(seed), stream_id(stream), *[int(i) for i in ids]])


def keys(seed: int, stream: str, *ids) -> "jax.Array":  # noqa: F821
  """Per-row keys ``row_keys(seed, STREAMS[stream], *ids)``."""
  return row_keys(seed, stream_id(stream), *[np.asarray(i) for i in ids])
