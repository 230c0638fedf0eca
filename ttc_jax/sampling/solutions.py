"""Whole-solution sampling and Monte-Carlo rollouts over the sampling core.

Callers (pass@1 estimation, PRM labelling, verifier evaluation) hand over
prompts as token lists and one PRNG id tuple per row; rows are processed in
fixed-size chunks (the last one padded) so the core compiles once per shape.
Row ``i`` draws from ``row_keys(seed, *ids[i])``, so a row's sample does not
depend on chunking, on the other rows or on the device count.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import numpy as np

from ttc_jax import parallel
from ttc_jax.progress import Progress
from ttc_jax.sampling import serving
from ttc_jax.sampling import streams
from ttc_jax.sampling import utilization
from ttc_jax.sampling.core import SHRINK_ROWS
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.sampling.core import row_keys
from ttc_jax.sampling.cached import left_pad  # noqa: F401  (re-exported)
from ttc_jax.sampling.cached import round_up  # noqa: F401  (re-exported)


@dataclasses.dataclass(frozen=True)
class Generations:
  """Sampled continuations, host numpy.

  tokens: (N, T) int32 new tokens, pad after each row's length.
  lengths: (N,) int32.
  stopped: (N,) bool, the row ended on EOS (or on the step delimiter when asked).
  """

  tokens: np.ndarray
  lengths: np.ndarray
  stopped: np.ndarray
  # Decode steps x rows of every sampling call that made them (0: not measured); the
  # alive ones are sum(lengths): their ratio is the decode utilization.
  row_steps: int = 0
  calls: int = 0  # sampling calls made
  idle_steps: int = 0  # of the row-steps, those of slots with no request (continuous batching)

  def row(self, i: int) -> list[int]:
    return self.tokens[i, :self.lengths[i]].tolist()

  @property
  def utilization(self) -> float | None:
    """Alive row-steps (tokens made) over the row-steps paid (None: not measured)."""
    return float(self.lengths.sum()) / self.row_steps if self.row_steps else None


def generate(core: SamplingCore, prompts: Sequence[Sequence[int]], ids: np.ndarray, seed: int,
             sp: SamplingParams, *, batch_size: int, pad_multiple: int = 16,
             segment: int | None = None, limits=None, desc: str = "sampling",
             log_fn: Callable[[str], None] | None = None) -> Generations:
  """Samples one continuation per prompt row.

  Args:
    core: the policy's sampling core.
    prompts: N token lists (BOS included), any lengths up to the model context.
    ids: (N, k) integer ids of each row's PRNG key: ``row_keys(seed, *ids[i])``.
    seed: base seed.
    sp: sampling parameters: at most ``max_new_tokens`` per row, and never past
      the model context (a row cut there is not ``stopped``).
    batch_size: rows per core call.
    pad_multiple: prompts are left-padded to the chunk's longest, rounded up to this.
    segment: None: static batches (each call runs until its longest row ends); an
      integer: continuous batching (:func:`ttc_jax.sampling.serving.serve`), ``batch_size``
      slots refilled every ``segment`` decode steps. Both give the same tokens.
    limits: optional (N,) per-row token caps in [0, max_new_tokens].

  The calls' row-steps (and the tokens made) go to :mod:`ttc_jax.sampling.utilization`.

  Chunks (static) or equal parts of the queue (continuous) are split over processes
  (:func:`ttc_jax.parallel.map_chunks`); every process returns all rows.
  """
  n = len(prompts)
  ids = np.asarray(ids, np.int64).reshape(n, -1)
  if n == 0:
    raise ValueError("no prompts to sample from.")
  if batch_size <= 0:
    raise ValueError(f"batch_size={batch_size} must be > 0.")
  limits = (np.full((n,), sp.max_new_tokens, np.int32) if limits is None
            else np.asarray(limits, np.int32))
  if limits.shape != (n,):
    raise ValueError(f"limits has shape {limits.shape}; expected ({n},).")
  pad_id = core.ids.pad_id
  # Chunks of similar prompt length waste less padding; results do not depend on order.
  order = np.argsort([len(p) for p in prompts], kind="stable")
  kwargs = {} if log_fn is None else {"log_fn": log_fn}
  if segment is not None:
    gens = _generate_continuous(core, prompts, ids, seed, sp, order, limits, slots=batch_size,
                                segment=segment, pad_multiple=pad_multiple, desc=desc,
                                **kwargs)
    utilization.record(gens.row_steps, int(gens.lengths.sum()), gens.calls, gens.idle_steps)
    return gens
  chunks = [order[s:s + batch_size] for s in range(0, n, batch_size)]
  progress = Progress(n, desc, unit="rows", **kwargs)

  def run(c: int):
    sel = chunks[c]
    rows = [prompts[i] for i in sel]
    length = round_up(max(len(r) for r in rows), pad_multiple)
    fill = batch_size - len(sel)  # Pad the last chunk: one compiled shape.
    rows = rows + [rows[0]] * fill
    row_ids = np.concatenate([ids[sel], np.repeat(ids[sel[:1]], fill, 0)])
    row_limits = np.concatenate([limits[sel], np.zeros(fill, np.int32)])  # fill: no work
    tok, valid = left_pad(rows, length, pad_id)
    state = core.prefill(tok, valid, cache_size=length + sp.max_new_tokens)
    out = core.sample(state, row_keys(seed, *row_ids.T), sp, limits=row_limits,
                      shrink=SHRINK_ROWS)
    k = len(sel)
    progress.update(k * parallel.process_count())
    return (np.asarray(out.tokens)[:k], np.asarray(out.lengths)[:k],
            np.asarray(out.stopped)[:k], int(out.row_steps))

  tokens = np.full((n, sp.max_new_tokens), pad_id, np.int32)
  lengths = np.zeros((n,), np.int32)
  stopped = np.zeros((n,), bool)
  row_steps = 0
  for sel, (t, l, st, paid) in zip(chunks, parallel.map_chunks(run, len(chunks))):
    tokens[sel], lengths[sel], stopped[sel] = t, l, st
    row_steps += paid
  utilization.record(row_steps, int(lengths.sum()), len(chunks))
  return Generations(tokens=tokens, lengths=lengths, stopped=stopped, row_steps=row_steps,
                     calls=len(chunks))


def _generate_continuous(core, prompts, ids, seed, sp, order, limits, *, slots, segment,
                         pad_multiple, desc, log_fn=None) -> Generations:
  """:func:`generate` by continuous batching: the queue (shortest prompts first: the
  prompt width is the longest's) split into one part per process."""
  parts = np.array_split(order, parallel.process_count())
  kwargs = {} if log_fn is None else {"log_fn": log_fn}

  def run(c: int):
    sel = parts[c]
    if not len(sel):  # fewer requests than processes
      return (np.zeros((0, sp.max_new_tokens), np.int32), np.zeros((0,), np.int32),
              np.zeros((0,), bool), 0, 0, 0)
    served = serving.serve(core, [prompts[i] for i in sel], row_keys(seed, *ids[sel].T), sp,
                           slots=slots, segment=segment, limits=limits[sel],
                           pad_multiple=pad_multiple, desc=desc, **kwargs)
    return (served.tokens, served.lengths, served.stopped, served.row_steps, served.calls,
            served.idle_steps)

  n = len(prompts)
  tokens = np.full((n, sp.max_new_tokens), core.ids.pad_id, np.int32)
  lengths = np.zeros((n,), np.int32)
  stopped = np.zeros((n,), bool)
  row_steps = calls = idle = 0
  for sel, (t, l, st, paid, made, unused) in zip(parts, parallel.map_chunks(run, len(parts))):
    tokens[sel], lengths[sel], stopped[sel] = t, l, st
    row_steps, calls, idle = row_steps + paid, calls + made, idle + unused
  return Generations(tokens=tokens, lengths=lengths, stopped=stopped, row_steps=row_steps,
                     calls=calls, idle_steps=idle)


def stop_sets(step_ids: Sequence[int], eos_ids: Sequence[int],
              step_pairs: Sequence[tuple[Sequence[int], Sequence[int]]] = ()
              ) -> tuple[frozenset, tuple[tuple[frozenset, frozenset], ...]]:
  """The ids that end a step (delimiters and EOS) and the split-delimiter pairs as sets,
  built once per tokenizer (a real one has thousands of such ids) and reused."""
  return _stop_sets(tuple(step_ids), tuple(eos_ids),
                    tuple((tuple(a), tuple(b)) for a, b in step_pairs))


@functools.lru_cache(maxsize=16)
def _stop_sets(step_ids: tuple, eos_ids: tuple, step_pairs: tuple):
  return (frozenset(step_ids) | frozenset(eos_ids),
          tuple((frozenset(a), frozenset(b)) for a, b in step_pairs))


def step_ends(tokens: Sequence[int], step_ids: Sequence[int], eos_ids: Sequence[int],
              step_pairs: Sequence[tuple[Sequence[int], Sequence[int]]] = ()) -> list[int]:
  """Indices of each step's last token in a generated solution.

  A step ends at any step delimiter id, at a token of a pair's ``after`` set right after
  one of its ``before`` set (a delimiter split over two tokens: SpecialIds.step_pairs),
  or at EOS. An unfinished solution (no EOS) gets its last token as the end of its last
  step; an empty one has no steps.
  """
  tokens = [int(t) for t in tokens]
  stops, pairs = stop_sets(step_ids, eos_ids, step_pairs)
  ends = [i for i, t in enumerate(tokens)
          if t in stops or (i and any(tokens[i - 1] in a and t in b for a, b in pairs))]
  if tokens and (not ends or ends[-1] != len(tokens) - 1):
    ends.append(len(tokens) - 1)
  return ends


@dataclasses.dataclass(frozen=True)
class ProblemSamples:
  """``n`` sampled solutions for each of P problems (row p * n + s is sample s of problem p).

  prompts: P token lists (BOS + prompt).
  gens: the (P * n) generations.
  texts: decoded solutions; answers: extracted final answers (None: no answer);
  correct: (P * n,) bool.
  """

  problems: list
  n: int
  prompts: list[list[int]]
  gens: Generations
  texts: list[str]
  answers: list[str | None]
  correct: np.ndarray

  def correct_matrix(self) -> np.ndarray:
    return self.correct.reshape(len(self.problems), self.n)

  def rows_and_step_ends(self, tok) -> tuple[list[list[int]], list[list[int]]]:
    """Each sample as prompt + generation, and the positions of its step ends in that row
    (``tok``: its step and EOS ids)."""
    m = self.n
    rows = [self.prompts[i // m] + self.gens.row(i) for i in range(len(self.texts))]
    ends = [[len(self.prompts[i // m]) + e
             for e in step_ends(self.gens.row(i), tok.step_ids, tok.eos_ids, tok.step_pairs)]
            for i in range(len(rows))]
    return rows, ends


def sample_problems(core: SamplingCore, tok, task, problems: Sequence, n: int, seed: int,
                    stream: str, sp: SamplingParams, *, batch_size: int,
                    segment: int | None = None, run: int | None = None,
                    log_fn: Callable[[str], None] | None = None) -> ProblemSamples:
  """Samples ``n`` full solutions per problem and grades them with the task.

  Sample s of a problem draws from ``keys(seed, stream, split, problem index, s)``, or
  ``keys(seed, stream, split, problem index, s, run)`` for a ``run`` (e.g. a round) given;
  ``segment``: continuous batching (see :func:`generate`).
  """
  prompts = [tok.encode_prompt(task.format_prompt(p)) for p in problems]
  rows = [prompts[i] for i in range(len(problems)) for _ in range(n)]
  extra = () if run is None else (int(run),)
  ids = np.array([(streams.stream_id(stream), streams.split_id(p.split), p.index, s) + extra
                  for p in problems for s in range(n)], np.int64)
  gens = generate(core, rows, ids, seed, sp, batch_size=batch_size, segment=segment,
                  desc=f"{stream} samples", log_fn=log_fn)
  return grade(tok, task, problems, n, prompts, gens)


def grade(tok, task, problems: Sequence, n: int, prompts: list[list[int]], gens: Generations
          ) -> ProblemSamples:
  """Decodes and grades generations (row p * n + s: sample s of problem p).

  A solution that did not end (no EOS: cut by its token cap or the context)
  has no answer and is wrong.
  """
  texts = [tok.decode(gens.row(i)) for i in range(gens.tokens.shape[0])]
  answers, correct = [], np.zeros(len(texts), bool)
  for i, text in enumerate(texts):
    problem = problems[i // n]
    answers.append(task.extract_answer(text) if gens.stopped[i] else None)
    correct[i] = bool(gens.stopped[i]) and task.is_correct(text, problem)
  return ProblemSamples(problems=list(problems), n=n, prompts=prompts, gens=gens, texts=texts,
                        answers=answers, correct=correct)
