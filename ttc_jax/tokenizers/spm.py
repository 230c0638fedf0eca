"""SentencePiece tokenizer trained on a task's corpus.

Vocabulary layout (fixed by construction):

  id 0          <pad>
  id 1          <s>     (BOS)
  id 2          </s>    (EOS)
  id 3          <unk>
  id 4          the task's step delimiter (e.g. "\\n")      -> `step_ids`
  id 5          the task's answer marker (e.g. "Answer:")   -> `answer_id`
  ...           learned pieces (digits are always single pieces)
  ...           "<unused{i}>" pieces padding the vocab up to `vocab_size`

Design notes:

* Exact round trip: `decode(encode(t)) == t` for every text made of characters
  seen in training. Normalization is the identity, whitespace is neither
  collapsed nor prefixed (`add_dummy_prefix=False`), and the step delimiter
  is a user-defined piece, so newlines survive. There is no byte fallback
  (it would add 256 pieces); characters never seen in training encode to
  `<unk>`.
* The delimiter and marker are user-defined pieces, which also makes
  tokenization split at them: `encode(prompt) + encode(solution) ==
  encode(prompt + solution)` whenever the prompt ends with the delimiter.
* A small task alphabet yields fewer learned pieces than a convenient model
  vocabulary size; the remainder is filled with "<unused{i}>" pieces of type
  UNUSED, which encoding never produces. `vocab_size` is therefore exactly
  the requested size, and a model's embedding size can equal it.
* Training is deterministic (single thread, no sampling, no file paths in the
  model proto): same texts and options -> byte-identical `.model` file.
"""

from __future__ import annotations

import io
import os
import re
from typing import Iterable, Literal, Sequence

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from ttc_jax.tasks import base

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
UNK_ID = 3
STEP_ID = 4
ANSWER_ID = 5

_UNUSED_PIECE = "<unused{}>"
_PieceType = sentencepiece_model_pb2.ModelProto.SentencePiece.Type


def train_model_proto(
    texts: Iterable[str],
    *,
    step_delimiter: str,
    answer_marker: str,
    vocab_size: int,
    model_type: Literal["unigram", "bpe"] = "unigram",
) -> bytes:
  """Trains a SentencePiece model; returns the serialized `ModelProto`.

  Args:
    texts: Training texts (each may contain the step delimiter).
    step_delimiter: Becomes user-defined piece `STEP_ID`.
    answer_marker: Becomes user-defined piece `ANSWER_ID`.
    vocab_size: Exact size of the resulting vocabulary.
    model_type: SentencePiece model type.

  Raises:
    ValueError: If `vocab_size` cannot hold the special pieces and the
      corpus alphabet.
  """
  if not step_delimiter or not answer_marker:
    raise ValueError("step_delimiter and answer_marker must be non-empty.")
  writer = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=writer,
        model_type=model_type,
        vocab_size=vocab_size,
        # `vocab_size` is an upper bound; the rest is padded below.
        hard_vocab_limit=False,
        character_coverage=1.0,
        byte_fallback=False,
        split_digits=True,
        user_defined_symbols=[step_delimiter, answer_marker],
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        max_sentence_length=1 << 16,
        pad_id=PAD_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        num_threads=1,
        minloglevel=2,
    )
  except RuntimeError as e:
    m = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(e))
    if m:
      raise ValueError(
          f"vocab_size={vocab_size} is too small for this corpus: its characters and the "
          f"special pieces need at least {m.group(2)} ids.") from e
    raise
  proto = sentencepiece_model_pb2.ModelProto.FromString(writer.getvalue())
  num_learned = len(proto.pieces)
  if num_learned > vocab_size:  # Not expected with hard_vocab_limit=False.
    raise ValueError(
        f"Trained {num_learned} pieces, more than vocab_size={vocab_size}."
    )
  for i in range(vocab_size - num_learned):
    proto.pieces.add(piece=_UNUSED_PIECE.format(i), score=0.0,
                     type=_PieceType.UNUSED)
  proto.trainer_spec.vocab_size = vocab_size
  return proto.SerializeToString(deterministic=True)


def _escape_piece(piece: str) -> str:
  return piece.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


class SentencePieceTokenizer:
  """SentencePiece wrapper with fixed special ids and batch helpers."""

  def __init__(self, model_proto: bytes, path: str | None = None):
    """Builds a tokenizer from a serialized `ModelProto`.

    Args:
      model_proto: Bytes of a `.model` file written by `SentencePieceTokenizer.train`.
      path: The file it was read from (None: in memory only).

    Raises:
      ValueError: If the model does not have the expected special pieces.
    """
    self._model_proto = bytes(model_proto)
    self.path = path
    self._sp = spm.SentencePieceProcessor(model_proto=self._model_proto)
    spec = sentencepiece_model_pb2.ModelProto.FromString(
        self._model_proto
    ).trainer_spec
    got = (self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id(),
           self._sp.unk_id())
    if got != (PAD_ID, BOS_ID, EOS_ID, UNK_ID):
      raise ValueError(f"Unexpected (pad, bos, eos, unk) ids {got}.")
    if len(spec.user_defined_symbols) < 2:
      raise ValueError("Model lacks the step delimiter / answer marker pieces.")
    self._step_piece, self._answer_piece = spec.user_defined_symbols[:2]
    if (self._sp.piece_to_id(self._step_piece) != STEP_ID
        or self._sp.piece_to_id(self._answer_piece) != ANSWER_ID):
      raise ValueError(
          "Step delimiter / answer marker pieces are not at ids "
          f"{STEP_ID} / {ANSWER_ID}."
      )

  # ---------------------------------------------------------------------------
  # Construction.
  # ---------------------------------------------------------------------------

  @classmethod
  def train(
      cls,
      task: base.Task,
      model_prefix: str,
      *,
      vocab_size: int = 64,
      num_texts: int = 5000,
      model_type: Literal["unigram", "bpe"] = "unigram",
  ) -> "SentencePieceTokenizer":
    """Trains on `task.corpus("train", num_texts)`; writes prefix.{model,vocab}.

    Args:
      task: Task providing the corpus, step delimiter and answer marker.
      model_prefix: Output path prefix; parent directories are created.
      vocab_size: Exact vocabulary size (padded with unused pieces).
      num_texts: Number of train problems in the corpus.
      model_type: SentencePiece model type.

    Returns:
      The trained tokenizer.
    """
    proto = train_model_proto(
        task.corpus("train", num_texts),
        step_delimiter=task.step_delimiter,
        answer_marker=task.answer_marker,
        vocab_size=vocab_size,
        model_type=model_type,
    )
    tokenizer = cls(proto, path=model_prefix + ".model")
    directory = os.path.dirname(model_prefix)
    if directory:
      os.makedirs(directory, exist_ok=True)
    with open(model_prefix + ".model", "wb") as f:
      f.write(proto)
    with open(model_prefix + ".vocab", "w", encoding="utf-8") as f:
      for i in range(tokenizer.vocab_size):
        f.write(f"{_escape_piece(tokenizer.id_to_piece(i))}\t"
                f"{tokenizer._sp.get_score(i)}\n")
    return tokenizer

  @classmethod
  def load(cls, path: str) -> "SentencePieceTokenizer":
    """Loads a `.model` file written by `SentencePieceTokenizer.train`.

    Raises:
      ValueError: naming the path, if the file is not such a model.
    """
    with open(path, "rb") as f:
      blob = f.read()
    try:
      return cls(blob, path=path)
    except Exception as e:  # pylint: disable=broad-except
      # sentencepiece reports a damaged proto as an INTERNAL RuntimeError without the path.
      raise ValueError(
          f"{path} is not a tokenizer model written by SentencePieceTokenizer.train "
          f"({type(e).__name__}: "
          f"{str(e).strip()[:200]}).") from e

  # ---------------------------------------------------------------------------
  # Vocabulary.
  # ---------------------------------------------------------------------------

  @property
  def serialized_model(self) -> bytes:
    """Bytes of the `.model` file."""
    return self._model_proto

  @property
  def vocab_size(self) -> int:
    return self._sp.vocab_size()

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def bos_id(self) -> int:
    return BOS_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def unk_id(self) -> int:
    return UNK_ID

  @property
  def eos_ids(self) -> tuple[int, ...]:
    """Ids that end a sample (sampling stops at any of them)."""
    return (EOS_ID,)

  @property
  def step_ids(self) -> tuple[int, ...]:
    """Ids that end a step: the step-delimiter piece (one piece by construction;
    tokenizers of real models end a step with many tokens)."""
    return (STEP_ID,)

  @property
  def step_pairs(self) -> tuple:
    """None: the step delimiter is one piece (see HFTokenizer.step_pairs)."""
    return ()

  @property
  def suppress_ids(self) -> tuple[int, ...]:
    """Ids a model never generates: pad, BOS, <unk> and the unused pieces that pad
    the vocabulary (encoding never produces them, so no training text has them)."""
    return tuple(i for i in range(self.vocab_size)
                 if i in (PAD_ID, BOS_ID, UNK_ID) or self._sp.is_unused(i))

  @property
  def answer_id(self) -> int:
    """Id of the answer-marker piece."""
    return ANSWER_ID

  @property
  def step_piece(self) -> str:
    return self._step_piece

  @property
  def answer_piece(self) -> str:
    return self._answer_piece

  def id_to_piece(self, token_id: int) -> str:
    return self._sp.id_to_piece(int(token_id))

  def check_vocab(self, model_vocab_size: int) -> None:
    """Raises ValueError if `model_vocab_size` != the tokenizer's vocab size."""
    if int(model_vocab_size) != self.vocab_size:
      raise ValueError(
          f"Model vocab size {model_vocab_size} != tokenizer vocab size "
          f"{self.vocab_size}."
      )

  # ---------------------------------------------------------------------------
  # Encoding / decoding.
  # ---------------------------------------------------------------------------

  def encode(self, text: str, *, bos: bool = False, eos: bool = False
             ) -> list[int]:
    """Token ids of `text`, optionally with BOS prepended / EOS appended."""
    ids = self._sp.encode(text)
    return ([BOS_ID] if bos else []) + ids + ([EOS_ID] if eos else [])

  def encode_prompt(self, text: str) -> list[int]:
    """A prompt's ids as the policy was trained on them: BOS + ``text``."""
    return self.encode(text, bos=True)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of `ids`: stops at the first EOS and skips PAD and BOS.

    Args:
      ids: 1-D token ids (list, numpy or jax array).

    Raises:
      ValueError: If an id is outside `[0, vocab_size)`.
    """
    ids = np.asarray(ids).reshape(-1).tolist()
    out = []
    for i in ids:
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"Token id {i} outside [0, {self.vocab_size}).")
      if i == EOS_ID:
        break
      if i not in (PAD_ID, BOS_ID):
        out.append(i)
    return self._sp.decode(out)

  def decode_batch(self, tokens: np.ndarray) -> list[str]:
    """`decode` applied to every row of a (B, L) array."""
    return [self.decode(row) for row in np.asarray(tokens)]

  def encode_batch(
      self,
      texts: Sequence[str],
      *,
      bos: bool = True,
      eos: bool = False,
      pad_to: int | None = None,
      padding_side: Literal["left", "right"] = "right",
  ) -> tuple[np.ndarray, np.ndarray]:
    """Encodes and pads a batch.

    Args:
      texts: B texts.
      bos: Prepend BOS to every text.
      eos: Append EOS to every text.
      pad_to: Length L of the output; defaults to the longest encoding. Never
        truncates.
      padding_side: Where PAD tokens go.

    Returns:
      `(tokens, mask)`: int32 (B, L) ids padded with `pad_id`, and a bool
      (B, L) mask that is True on real (non-padding) tokens.

    Raises:
      ValueError: If an encoding is longer than `pad_to`, or for a bad
        `padding_side`.
    """
    if padding_side not in ("left", "right"):
      raise ValueError(
          f"padding_side must be 'left' or 'right', got {padding_side!r}."
      )
    encoded = [self.encode(t, bos=bos, eos=eos) for t in texts]
    longest = max((len(e) for e in encoded), default=0)
    length = longest if pad_to is None else pad_to
    for i, e in enumerate(encoded):
      if len(e) > length:
        raise ValueError(
            f"Text {i} encodes to {len(e)} tokens, more than pad_to={length}."
        )
    tokens = np.full((len(encoded), length), PAD_ID, dtype=np.int32)
    mask = np.zeros((len(encoded), length), dtype=bool)
    for i, e in enumerate(encoded):
      start = length - len(e) if padding_side == "left" else 0
      tokens[i, start:start + len(e)] = e
      mask[i, start:start + len(e)] = True
    return tokens, mask
