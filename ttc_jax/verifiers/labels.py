"""Monte-Carlo step labels for PRM training (the paper's approach, after Math-Shepherd).

For a sampled solution with steps s_1..s_n, step j < n is labelled with the
fraction of K policy rollouts from ``prompt + s_1..s_j`` that reach the right
answer; the last step (the final-answer line) is labelled with the sample's
own correctness (nothing is left to roll out). A rollout continues the
solution under the sample's own token cap (``max_new_tokens`` for the whole
solution, prefix included), so a label is the value of the prefix under the
sampling procedure that produced it. Rollouts run through the sampling core as
a tree expansion: each distinct prefix is prefilled once and its cache
gathered K times.

:class:`LabelledSamples` holds, per sample: problem and sample index, the token
row (BOS + prompt + solution), its length, the step-end indices into the row
(-1 padded), the step labels (NaN padded) and the sample's correctness. This
module does no file IO (the pipeline stores labels in resumable shards).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from ttc_jax import parallel
from ttc_jax.progress import Progress
from ttc_jax.sampling import solutions
from ttc_jax.sampling import streams
from ttc_jax.sampling import utilization
from ttc_jax.sampling.core import SHRINK_ROWS
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.sampling.core import row_keys


@dataclasses.dataclass(frozen=True)
class LabelledSamples:
  """Samples with per-step labels (numpy; see the module docstring)."""

  problem_index: np.ndarray  # (N,)
  sample_index: np.ndarray  # (N,)
  rows: np.ndarray  # (N, L) int32, right padded
  lengths: np.ndarray  # (N,)
  prompt_lengths: np.ndarray  # (N,)
  step_ends: np.ndarray  # (N, S) int32, -1 padded
  labels: np.ndarray  # (N, S) float32, NaN padded
  correct: np.ndarray  # (N,) bool

  def row(self, i: int) -> list[int]:
    return self.rows[i, :self.lengths[i]].tolist()

  def ends(self, i: int) -> list[int]:
    return [int(e) for e in self.step_ends[i] if e >= 0]

  def step_labels(self, i: int, kind: str = "soft") -> list[float]:
    """Sample i's step labels: 'soft', the MC value (the fraction of rollouts that
    reach the right answer), or 'hard', 1 if any rollout does (Math-Shepherd's hard
    estimate: the step can still lead to a right answer)."""
    v = self.labels[i, :len(self.ends(i))]
    if kind == "hard":
      return (v > 0).astype(np.float64).tolist()
    if kind != "soft":
      raise ValueError(f"step label kind {kind!r}: expected 'soft' or 'hard'.")
    return v.tolist()

  def stats(self) -> dict:
    """Counts and label statistics (a stage's summary)."""
    steps = self.labels[np.isfinite(self.labels)]
    return {"samples": len(self), "problems": int(np.unique(self.problem_index).size),
            "steps": int(steps.size), "sample_accuracy": float(self.correct.mean()),
            "mean_step_label": float(steps.mean()),
            "frac_steps_label_ge_0.5": float((steps >= 0.5).mean())}

  def arrays(self) -> dict[str, np.ndarray]:
    return dataclasses.asdict(self)

  @classmethod
  def from_arrays(cls, arrays) -> "LabelledSamples":
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in arrays]
    if missing:
      raise ValueError(f"labelled samples lack the arrays {missing}.")
    return cls(**{f.name: np.asarray(arrays[f.name]) for f in dataclasses.fields(cls)})

  @classmethod
  def concat(cls, parts: Sequence["LabelledSamples"]) -> "LabelledSamples":
    width = max(p.rows.shape[1] for p in parts)
    steps = max(p.step_ends.shape[1] for p in parts)

    def pad(x, w, fill):
      out = np.full((x.shape[0], w), fill, x.dtype)
      out[:, :x.shape[1]] = x
      return out

    return cls(
        problem_index=np.concatenate([p.problem_index for p in parts]),
        sample_index=np.concatenate([p.sample_index for p in parts]),
        rows=np.concatenate([pad(p.rows, width, 0) for p in parts]),
        lengths=np.concatenate([p.lengths for p in parts]),
        prompt_lengths=np.concatenate([p.prompt_lengths for p in parts]),
        step_ends=np.concatenate([pad(p.step_ends, steps, -1) for p in parts]),
        labels=np.concatenate([pad(p.labels, steps, np.nan) for p in parts]),
        correct=np.concatenate([p.correct for p in parts]))

  def __len__(self) -> int:
    return self.rows.shape[0]


def rollout_success(core: SamplingCore, tok, task, problems: Sequence, prefixes: Sequence,
                    prefix_ids: np.ndarray, k: int, seed: int, sp: SamplingParams, *,
                    batch_size: int, expected_lengths: Sequence[int] | None = None,
                    segment: int | None = None,
                    log_fn: Callable[[str], None] | None = None) -> np.ndarray:
  """Fraction of ``k`` rollouts from each prefix that end with the right answer.

  Args:
    prefixes: P tuples (problem position in ``problems``, prompt tokens, solution
      prefix tokens).
    prefix_ids: (P, m) ids; rollout r of prefix i uses
      ``row_keys(seed, *prefix_ids[i], r)``.
    k: rollouts per prefix.
    sp: sampling parameters; ``max_new_tokens`` caps the whole solution, so a
      rollout from a prefix of j solution tokens generates at most
      ``max_new_tokens - j`` (and never past the model context).
    batch_size: rows per core call (a multiple of ``k``).
    expected_lengths: optional guess of each prefix's rollout length. A chunk
      decodes until its longest rollout ends, so chunks are formed from
      prefixes of similar expected length (results do not depend on it).
    segment: continuous batching instead of chunks (``solutions.generate``): every
      rollout is a request of its own (prefix prefilled per rollout), ``batch_size``
      slots; the same rollouts.
  """
  if segment is not None:
    return _rollouts_continuous(core, tok, task, problems, prefixes, prefix_ids, k, seed, sp,
                                batch_size=batch_size, segment=segment, log_fn=log_fn)
  if batch_size % k:
    raise ValueError(f"batch_size={batch_size} must be a multiple of rollouts={k}.")
  per_chunk = batch_size // k
  n = len(prefixes)
  sort_key = ([len(p[1]) + len(p[2]) for p in prefixes] if expected_lengths is None
              else expected_lengths)
  order = np.argsort(sort_key, kind="stable")
  chunks = [order[s:s + per_chunk] for s in range(0, n, per_chunk)]
  kwargs = {} if log_fn is None else {"log_fn": log_fn}
  progress = Progress(n * k, "rollouts", unit="rows", **kwargs)

  def run(c: int) -> np.ndarray:
    sel = chunks[c]
    rows = [list(prefixes[i][1]) + list(prefixes[i][2]) for i in sel]
    limits = [max(0, sp.max_new_tokens - len(prefixes[i][2])) for i in sel]
    length = solutions.round_up(max(len(r) for r in rows), 16)
    fill = per_chunk - len(sel)
    rows += [rows[0]] * fill
    limits += [0] * fill
    tokens, valid = solutions.left_pad(rows, length, core.ids.pad_id)
    ids = np.concatenate([prefix_ids[sel], np.repeat(prefix_ids[sel[:1]], fill, 0)])
    ids = np.repeat(ids, k, axis=0)
    rollout = np.tile(np.arange(k), per_chunk)
    keys = row_keys(seed, *ids.T, rollout)
    state = core.prefill(tokens, valid, cache_size=length + sp.max_new_tokens)
    state = core.gather(state, np.repeat(np.arange(per_chunk), k))  # tree expansion
    out = core.sample(state, keys, sp, limits=np.repeat(limits, k), shrink=SHRINK_ROWS)
    gen = np.asarray(out.tokens)
    lengths = np.asarray(out.lengths)
    stopped = np.asarray(out.stopped)
    utilization.record(int(out.row_steps), int(lengths[:len(sel) * k].sum()))
    rate = np.zeros(len(sel))
    for c_, i in enumerate(sel):
      pos, _, prefix = prefixes[i]
      wins = 0
      for r in range(c_ * k, (c_ + 1) * k):
        if stopped[r]:
          text = tok.decode(list(prefix) + gen[r, :lengths[r]].tolist())
          wins += task.is_correct(text, problems[pos])
      rate[c_] = wins / k
    progress.update(len(sel) * k * parallel.process_count())
    return rate

  out = np.zeros(n, np.float64)
  for sel, rate in zip(chunks, parallel.map_chunks(run, len(chunks))):
    out[sel] = rate
  return out


def _rollouts_continuous(core, tok, task, problems, prefixes, prefix_ids, k, seed, sp, *,
                         batch_size, segment, log_fn) -> np.ndarray:
  """:func:`rollout_success` by continuous batching (rollout r of prefix i: request
  ``i * k + r``, the same key and token cap)."""
  n = len(prefixes)
  rows = [list(p[1]) + list(p[2]) for p in prefixes for _ in range(k)]
  ids = np.concatenate([np.repeat(np.asarray(prefix_ids, np.int64).reshape(n, -1), k, axis=0),
                        np.tile(np.arange(k), n)[:, None]], axis=1)
  limits = np.repeat([max(0, sp.max_new_tokens - len(p[2])) for p in prefixes], k)
  gens = solutions.generate(core, rows, ids, seed, sp, batch_size=batch_size, segment=segment,
                            limits=limits, desc="rollouts", log_fn=log_fn)
  wins = np.zeros(n * k)
  for r in range(n * k):
    if gens.stopped[r]:
      pos, _, prefix = prefixes[r // k]
      wins[r] = task.is_correct(tok.decode(list(prefix) + gens.row(r)), problems[pos])
  return wins.reshape(n, k).mean(axis=1)


def label_samples(core: SamplingCore, tok, task, samples: solutions.ProblemSamples, k: int,
                  seed: int, stream: str, sp: SamplingParams, *, batch_size: int,
                  segment: int | None = None,
                  log_fn: Callable[[str], None] | None = None) -> LabelledSamples:
  """MC step labels for every sample of ``samples`` (see the module docstring); with ``k`` =
  0, outcome labels only: the last step's is the sample's correctness, the others NaN (no
  rollout runs)."""
  step_ids, eos_ids, step_pairs = tok.step_ids, tok.eos_ids, tok.step_pairs
  n_rows = len(samples.texts)
  ends_all, prefixes, prefix_ids, remaining, where = [], [], [], [], {}
  refs = []  # per sample: list of (step j, prefix id or None)
  for i in range(n_rows):
    pos = i // samples.n
    problem = samples.problems[pos]
    gen = samples.gens.row(i)
    ends = solutions.step_ends(gen, step_ids, eos_ids, step_pairs)
    ends_all.append(ends)
    sample_refs = []
    for j, e in enumerate(ends):
      if j == len(ends) - 1 or k == 0:
        sample_refs.append(None if j == len(ends) - 1 else -1)  # last: its own correctness
        continue
      key = (pos, tuple(gen[:e + 1]))
      if key not in where:
        where[key] = len(prefixes)
        prefixes.append((pos, samples.prompts[pos], gen[:e + 1]))
        remaining.append(len(gen) - e - 1)  # the source sample's own continuation
        prefix_ids.append((streams.stream_id(stream), streams.split_id(problem.split),
                           problem.index, i % samples.n, j))
      sample_refs.append(where[key])
    refs.append(sample_refs)
  if prefixes:
    rates = rollout_success(core, tok, task, samples.problems, prefixes,
                            np.asarray(prefix_ids, np.int64), k, seed, sp,
                            batch_size=batch_size, expected_lengths=remaining, segment=segment,
                            log_fn=log_fn)
  else:
    rates = np.zeros(0)
  max_steps = max(1, max(len(e) for e in ends_all))
  prompt_lens = [len(samples.prompts[i // samples.n]) for i in range(n_rows)]
  width = max(p + int(l) for p, l in zip(prompt_lens, samples.gens.lengths))
  rows = np.zeros((n_rows, width), np.int32)
  lengths = np.zeros(n_rows, np.int32)
  step_ends_arr = np.full((n_rows, max_steps), -1, np.int32)
  labels = np.full((n_rows, max_steps), np.nan, np.float32)
  for i in range(n_rows):
    row = samples.prompts[i // samples.n] + samples.gens.row(i)
    rows[i, :len(row)] = row
    lengths[i] = len(row)
    for j, (e, ref) in enumerate(zip(ends_all[i], refs[i])):
      step_ends_arr[i, j] = prompt_lens[i] + e
      labels[i, j] = (float(samples.correct[i]) if ref is None
                      else np.nan if ref < 0 else rates[ref])
  return LabelledSamples(
      problem_index=np.array([samples.problems[i // samples.n].index for i in range(n_rows)]),
      sample_index=np.arange(n_rows) % samples.n,
      rows=rows, lengths=lengths, prompt_lengths=np.asarray(prompt_lens, np.int32),
      step_ends=step_ends_arr, labels=labels, correct=samples.correct.copy())



def sample_and_label(core: SamplingCore, tok, task, problems: Sequence, n: int, k: int,
                     seed: int, streams_: tuple[str, str], sp: SamplingParams, *,
                     batch_size: int, segment: int | None = None) -> LabelledSamples:
  """``n`` policy samples of each of ``problems``, every step labelled by ``k`` MC rollouts
  from its prefix; ``streams_``: the random streams of the samples and of the rollouts;
  ``segment``: continuous batching (the same samples and rollouts)."""
  samples = solutions.sample_problems(core, tok, task, problems, n, seed, streams_[0], sp,
                                      batch_size=batch_size, segment=segment)
  return label_samples(core, tok, task, samples, k, seed, streams_[1], sp,
                       batch_size=batch_size, segment=segment)
