"""Token datasets for training and their deterministic batch order.

Everything a training objective needs is one :class:`TokenDataset`: right-padded
token rows plus, per position, a weight and (for value heads) a target. The LM
objective (policy SFT) predicts ``tokens[:, t + 1]`` at position ``t`` where
``weights[:, t + 1]`` is set; the value objective (PRM / ORM) fits
``targets[:, t]`` at positions where ``weights[:, t]`` is set (step-end tokens).
The implicit-reward objectives (LM-head verifiers: ``training.trainer``) read, besides,
the reference model's log-probability of each token (``ref_logprobs``) and a label per
row (the sample's correctness); a DPO example is a pair of rows (``group=2``: the correct
solution, then the incorrect one), and the batch order draws examples, not rows.

The batch order is a pure function of ``(seed, step)``: sample position
``p = step * batch_size + j`` is element ``p % N`` of the permutation of epoch
``p // N``, drawn from ``SeedSequence([seed, epoch])``. Resuming at a step
therefore needs nothing but the step (the checkpoint also records the data
position ``step * batch_size`` and checks it). ``bucketed_batch_indices`` is the
same with batches of similar lengths, which cuts padding (rows are 20-120
tokens on the arithmetic task) and is also a pure function of (seed, step).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np

from ttc_jax.tasks import base
from ttc_jax.tokenizers.spm import SentencePieceTokenizer


@dataclasses.dataclass(frozen=True)
class TokenDataset:
  """Right-padded token rows with per-position loss weights and targets.

  tokens: (N, L) int32, BOS first, padded with the tokenizer's pad id.
  valid: (N, L) bool, True on real tokens.
  weights: (N, L) float32 loss weight per position (see module docstring).
  targets: (N, L) float32 value targets, or None for the LM objective.
  ref_logprobs: (N, L) float32, the reference model's log p(tokens[t] | tokens[:t]) at
    position t (0 at t = 0), or None (implicit-reward objectives only).
  labels: (N,) float32 per-row label in [0, 1], or None (implicit-reward objectives only).
  group: consecutive rows per example (2: a DPO pair); N is a multiple of it.
  """

  tokens: np.ndarray
  valid: np.ndarray
  weights: np.ndarray
  targets: np.ndarray | None = None
  ref_logprobs: np.ndarray | None = None
  labels: np.ndarray | None = None
  group: int = 1

  def __post_init__(self):
    shape = self.tokens.shape
    if len(shape) != 2 or shape[0] == 0:
      raise ValueError(f"tokens must be a non-empty (N, L) array; got shape {shape}.")
    for name in ("valid", "weights", "targets", "ref_logprobs"):
      x = getattr(self, name)
      if x is not None and x.shape != shape:
        raise ValueError(f"{name} has shape {x.shape}; tokens has {shape}.")
    for name in ("targets", "ref_logprobs", "labels"):
      x = getattr(self, name)
      if x is not None and not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contain NaN or inf.")
    if self.labels is not None and self.labels.shape != shape[:1]:
      raise ValueError(f"labels has shape {self.labels.shape}; expected ({shape[0]},).")
    if not isinstance(self.group, int) or self.group < 1 or shape[0] % self.group:
      raise ValueError(f"group={self.group!r}: expected an integer >= 1 dividing the "
                       f"{shape[0]} rows.")

  def __len__(self) -> int:
    """Examples (rows / group)."""
    return self.tokens.shape[0] // self.group

  @functools.cached_property
  def lengths(self) -> np.ndarray:
    """Tokens per example (right padded: the index after the last valid token of its
    longest row)."""
    last = np.where(self.valid.any(1), self.valid.shape[1] - np.argmax(self.valid[:, ::-1], 1), 0)
    return last.reshape(-1, self.group).max(1).astype(np.int64)

  def batch(self, indices: np.ndarray, pad_multiple: int | None = None
            ) -> dict[str, np.ndarray]:
    """Examples ``indices`` (their rows, each example's consecutively); with
    ``pad_multiple``, cut to the longest row rounded up to it."""
    indices = np.asarray(indices, np.int64)
    width = self.tokens.shape[1]
    if pad_multiple:
      width = min(width, -(-int(self.lengths[indices].max()) // pad_multiple) * pad_multiple)
    rows = (indices[:, None] * self.group + np.arange(self.group)).reshape(-1)
    out = {"tokens": self.tokens[rows, :width], "valid": self.valid[rows, :width],
           "weights": self.weights[rows, :width]}
    for name in ("targets", "ref_logprobs"):
      if getattr(self, name) is not None:
        out[name] = getattr(self, name)[rows, :width]
    if self.labels is not None:
      out["labels"] = self.labels[rows]
    return out


def pack(batch: dict[str, np.ndarray], width: int, rows_multiple: int = 1
         ) -> dict[str, np.ndarray]:
  """Packs a batch's rows (``TokenDataset.batch``) into fewer rows of ``width`` tokens.

  Rows go first-fit, longest first (ties by index: a pure function of the batch), each
  as its valid prefix (rows are right padded). ``segments`` (R, width) int32 holds, at each
  token, its row's index in the batch plus one (0: padding): the model attends within a
  row's tokens only and restarts positions at its first (``Transformer(segments=)``), so
  every row is computed as it is alone; the objectives read the row index to keep
  per-row sums (``labels`` stay per row). R is rounded up to ``rows_multiple`` (few
  compiled shapes; a multiple of the data devices).
  """
  valid = batch["valid"]
  n, w = valid.shape
  lengths = np.where(valid.any(1), w - np.argmax(valid[:, ::-1], 1), 0)
  if not np.array_equal(valid, np.arange(w)[None] < lengths[:, None]):
    raise ValueError("pack: rows must be right padded (their valid tokens a prefix).")
  if lengths.max(initial=0) > width:
    raise ValueError(f"pack: a row of {int(lengths.max())} tokens does not fit rows of "
                     f"width={width}.")
  free: list[int] = []  # room left in each packed row
  place = np.zeros((n, 2), np.int64)  # (packed row, offset) of each row
  for i in sorted(range(n), key=lambda i: (-lengths[i], i)):
    r = next((r for r, room in enumerate(free) if room >= lengths[i]), len(free))
    if r == len(free):
      free.append(width)
    place[i] = r, width - free[r]
    free[r] -= lengths[i]
  rows = -(-max(len(free), 1) // rows_multiple) * rows_multiple
  fields = [f for f in ("tokens", "valid", "weights", "targets", "ref_logprobs") if f in batch]
  out = {"segments": np.zeros((rows, width), np.int32)}
  out.update({f: np.zeros((rows, width), batch[f].dtype) for f in fields})  # padding: masked
  for i, (r, o) in enumerate(place):
    k = lengths[i]
    out["segments"][r, o:o + k] = i + 1
    for f in fields:
      out[f][r, o:o + k] = batch[f][i, :k]
  if "labels" in batch:
    out["labels"] = batch["labels"]
  return out


@functools.lru_cache(maxsize=8)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  perm = np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)
  perm.flags.writeable = False  # cached: shared by every caller
  return perm


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Example indices of batch ``step`` (see the module docstring)."""
  if num_examples <= 0 or batch_size <= 0 or step < 0:
    raise ValueError(f"need num_examples > 0, batch_size > 0, step >= 0; got "
                     f"{num_examples}, {batch_size}, {step}.")
  positions = step * batch_size + np.arange(batch_size)
  epochs = positions // num_examples
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    sel = epochs == epoch
    out[sel] = _epoch_permutation(seed, int(epoch), num_examples)[positions[sel] % num_examples]
  return out


@functools.lru_cache(maxsize=4)
def _bucketed_epoch(seed: int, epoch: int, lengths: tuple[int, ...], batch_size: int,
                    pool_batches: int) -> np.ndarray:
  n = len(lengths)
  perm = _epoch_permutation(seed, epoch, n)
  per_epoch = n // batch_size
  perm = perm[:per_epoch * batch_size].copy()  # never mutate the cached permutation
  lens = np.asarray(lengths)[perm]
  pool = pool_batches * batch_size
  for start in range(0, perm.size, pool):
    order = np.argsort(lens[start:start + pool], kind="stable")
    perm[start:start + pool] = perm[start:start + pool][order]
  batches = perm.reshape(per_epoch, batch_size)
  shuffle = np.random.default_rng(np.random.SeedSequence([seed, epoch, 1])).permutation(per_epoch)
  return batches[shuffle]


def bucketed_batch_indices(lengths: Sequence[int], batch_size: int, seed: int, step: int,
                           pool_batches: int = 16) -> np.ndarray:
  """Like :func:`batch_indices`, with batches of similar lengths (less padding).

  Each epoch's permutation is cut into pools of ``pool_batches`` batches; a pool
  is sorted by length and split into batches; the epoch's batches are then
  shuffled. Every example appears at most once per epoch (the last
  ``N % batch_size`` of each epoch's permutation are skipped). A pure function
  of (seed, step).
  """
  n = len(lengths)
  if n < batch_size or batch_size <= 0 or step < 0 or pool_batches <= 0:
    raise ValueError(f"need len(lengths) >= batch_size > 0, step >= 0, pool_batches > 0; got "
                     f"{n}, {batch_size}, {step}, {pool_batches}.")
  per_epoch = n // batch_size
  epoch, k = divmod(step, per_epoch)
  return _bucketed_epoch(seed, epoch, tuple(int(x) for x in lengths), batch_size,
                         pool_batches)[k].astype(np.int64)


def encode_rows(tokenizer: SentencePieceTokenizer, pieces: Sequence[Sequence[str]], seq_len: int,
                *, eos: bool = True) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
  """Encodes texts made of consecutive pieces; returns where each piece ends.

  Each row is BOS + encode(piece_1) + encode(piece_2) + ... (+ EOS). Pieces are
  encoded separately so that a piece boundary is always a token boundary.

  Returns:
    tokens (N, seq_len) int32, valid (N, seq_len) bool, and per row the index
    of the last token of each piece (the EOS, when added, ends the last piece).

  Raises:
    ValueError: naming the row if it does not fit ``seq_len`` tokens.
  """
  n = len(pieces)
  tokens = np.full((n, seq_len), tokenizer.pad_id, np.int32)
  valid = np.zeros((n, seq_len), bool)
  ends = []
  for i, row in enumerate(pieces):
    ids = [tokenizer.bos_id]
    row_ends = []
    for piece in row:
      ids += tokenizer.encode(piece)
      row_ends.append(len(ids) - 1)
    if eos:
      ids.append(tokenizer.eos_id)
      row_ends[-1] = len(ids) - 1
    if len(ids) > seq_len:
      raise ValueError(
          f"row {i} ({''.join(row)[:60]!r}...) encodes to {len(ids)} tokens, more than "
          f"seq_len={seq_len} (the model's max_seq_len); raise the context.")
    tokens[i, :len(ids)] = ids
    valid[i, :len(ids)] = True
    ends.append(row_ends)
  return tokens, valid, ends


def sft_dataset(task: base.Task, tokenizer: SentencePieceTokenizer, problems: Sequence[base.Problem],
                seq_len: int) -> TokenDataset:
  """Policy SFT data: BOS prompt solution EOS; the loss covers solution and EOS."""
  return prompt_target_dataset(
      tokenizer, [(task.format_prompt(p), p.solution) for p in problems], seq_len)


def prompt_target_dataset(tokenizer: SentencePieceTokenizer, rows: Sequence[Sequence[str]],
                          seq_len: int) -> TokenDataset:
  """BOS prompt target EOS per row of texts (prompt pieces..., target), each piece
  tokenized on its own; the loss covers the target and EOS only (SFT of the policy:
  (prompt, target); the revision model: its prompt's pieces, then the target)."""
  rows = [tuple(row) for row in rows]
  short = next((i for i, row in enumerate(rows) if len(row) < 2), None)
  if short is not None:
    raise ValueError(f"row {short} has {len(rows[short])} texts; expected prompt piece(s) "
                     "then a target.")
  tokens, valid, ends = encode_rows(tokenizer, rows, seq_len)
  weights = np.zeros(tokens.shape, np.float32)
  for i, row_ends in enumerate(ends):
    weights[i, row_ends[-2] + 1:row_ends[-1] + 1] = 1.0
  return TokenDataset(tokens=tokens, valid=valid, weights=weights)


def value_dataset(rows: Sequence[Sequence[int]], step_ends: Sequence[Sequence[int]],
                  labels: Sequence[Sequence[float]], seq_len: int, pad_id: int = 0,
                  every_token: bool = False,
                  prompt_lengths: Sequence[int] | None = None) -> TokenDataset:
  """Verifier data from token rows as the sampling core produced them.

  rows[i] is BOS + prompt + sampled solution tokens (ending in EOS when the
  sample finished); step_ends[i] are the indices (into rows[i]) of each step's
  last token -- the step delimiter, or EOS for the final step -- so the
  verifier is trained on exactly the tokens it reads during search.
  labels[i][j] is the target of step j in [0, 1]; NaN means "no label" (an
  ORM labels only the last step). ``every_token``: every token of step j (after
  the previous step's end) is a target with step j's label (dense supervision,
  as Cobbe et al. 2021 trained token-level verifiers), not only its last token;
  the verifier is still read at step ends. The first step starts after the
  prompt: ``prompt_lengths[i]`` (BOS included) is needed then.

  Raises:
    ValueError: naming the row for a length mismatch, a row longer than
      ``seq_len``, a step end outside the row, or a label outside [0, 1].
  """
  if not (len(rows) == len(step_ends) == len(labels)) or not rows:
    raise ValueError(f"need equal, non-zero numbers of rows/step_ends/labels; got "
                     f"{len(rows)}, {len(step_ends)}, {len(labels)}.")
  n = len(rows)
  if every_token and (prompt_lengths is None or len(prompt_lengths) != n):
    raise ValueError("every_token needs the prompt length of every row.")
  tokens = np.full((n, seq_len), pad_id, np.int32)
  valid = np.zeros((n, seq_len), bool)
  weights = np.zeros((n, seq_len), np.float32)
  targets = np.zeros((n, seq_len), np.float32)
  for i, (row, ends, ls) in enumerate(zip(rows, step_ends, labels)):
    if len(row) > seq_len:
      raise ValueError(f"row {i} has {len(row)} tokens, more than seq_len={seq_len}.")
    if len(ends) != len(ls) or not len(ends):
      raise ValueError(f"row {i}: {len(ends)} step ends but {len(ls)} labels (need >= 1).")
    tokens[i, :len(row)] = row
    valid[i, :len(row)] = True
    for j, (end, label) in enumerate(zip(ends, ls)):
      if not 0 <= end < len(row):
        raise ValueError(f"row {i}: step end {end} outside the row of {len(row)} tokens.")
      if not np.isfinite(label):
        continue
      if not 0.0 <= label <= 1.0:
        raise ValueError(f"row {i}: label {label} outside [0, 1].")
      first = end
      if every_token:
        first = ends[j - 1] + 1 if j else prompt_lengths[i]
      weights[i, first:end + 1] = 1.0
      targets[i, first:end + 1] = label
  return TokenDataset(tokens=tokens, valid=valid, weights=weights, targets=targets)


def implicit_reward_dataset(rows: Sequence[Sequence[int]], prompt_lengths: Sequence[int],
                            ref_logprobs: Sequence[np.ndarray], labels: Sequence[float],
                            seq_len: int, pad_id: int = 0, group: int = 1) -> TokenDataset:
  """LM-head verifier data (an implicit PRM's or a DPO verifier's) from token rows as the
  sampling core produced them.

  rows[i] is BOS + prompt + sampled solution; the implicit reward sums over its solution
  tokens (from ``prompt_lengths[i]``, BOS included, to its end): their ``weights`` are 1.
  ``ref_logprobs[i]`` is the reference model's log p(rows[i][t] | rows[i][:t]) for every t
  (the value at t = 0 is not read); ``labels[i]`` the row's label (its correctness) in
  [0, 1]. ``group``: rows per example (2 for DPO: the preferred row, then the other).

  Raises:
    ValueError: naming the row for a length mismatch, a row longer than ``seq_len``, a
      prompt that leaves no solution token, or a label outside [0, 1].
  """
  n = len(rows)
  if not n or not (n == len(prompt_lengths) == len(ref_logprobs) == len(labels)):
    raise ValueError(f"need equal, non-zero numbers of rows/prompt_lengths/ref_logprobs/"
                     f"labels; got {n}, {len(prompt_lengths)}, {len(ref_logprobs)}, "
                     f"{len(labels)}.")
  tokens = np.full((n, seq_len), pad_id, np.int32)
  valid = np.zeros((n, seq_len), bool)
  weights = np.zeros((n, seq_len), np.float32)
  ref = np.zeros((n, seq_len), np.float32)
  for i, (row, p, lp, y) in enumerate(zip(rows, prompt_lengths, ref_logprobs, labels)):
    if len(row) > seq_len:
      raise ValueError(f"row {i} has {len(row)} tokens, more than seq_len={seq_len}.")
    if not 1 <= p < len(row):
      raise ValueError(f"row {i}: prompt length {p} leaves no solution token in a row of "
                       f"{len(row)}.")
    if len(lp) != len(row):
      raise ValueError(f"row {i}: {len(lp)} reference log-probs for {len(row)} tokens.")
    if not 0.0 <= y <= 1.0:
      raise ValueError(f"row {i}: label {y} outside [0, 1].")
    tokens[i, :len(row)] = row
    valid[i, :len(row)] = True
    weights[i, p:len(row)] = 1.0
    ref[i, 1:len(row)] = np.asarray(lp, np.float32)[1:]
  return TokenDataset(tokens=tokens, valid=valid, weights=weights, ref_logprobs=ref,
                      labels=np.asarray(labels, np.float32), group=group)
