"""Scoring rows in batches of similar length, the batches split over the processes.

Rows are taken in order of length (a stable sort: equal lengths keep their order), cut
into chunks of a fixed number of rows, and each chunk is scored by one process
(:func:`ttc_jax.parallel.map_chunks`); the results come back in the rows' own order. A
caller pads each chunk only to its own longest row, so no call pays for the longest row
of all. Padding, batch rounding and the forward pass are the caller's.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import numpy as np

from ttc_jax import parallel

T = TypeVar("T")


def map_by_length(lengths: Sequence[int], chunk_size: int,
                  score: Callable[[np.ndarray], Sequence[T]]) -> list[T]:
  """One result per row, in the rows' order, from ``score`` called on chunks of row indices.

  Args:
    lengths: each row's length.
    chunk_size: rows per chunk (the last chunk may hold fewer).
    score: given the indices of a chunk's rows (shortest first), returns one result per
      row, in that order. Each chunk is computed by one process and the results gathered
      on every process.

  Returns:
    ``score``'s result for row i at position i.
  """
  n = len(lengths)
  order = np.argsort(lengths, kind="stable")
  starts = list(range(0, n, chunk_size))

  def run(c: int) -> Sequence[T]:
    return score(order[starts[c]:starts[c] + chunk_size])

  out: list[T] = [None] * n  # type: ignore[list-item]
  for i, v in zip(order, (v for chunk in parallel.map_chunks(run, len(starts))
                          for v in chunk)):
    out[i] = v
  return out
