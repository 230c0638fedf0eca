"""Process reward models behind one interface: how a solution is written for a PRM, and
where its step scores are read.

Real PRMs score steps in different ways; a :class:`PRMFormat` says which, and
:class:`AdaptedPRM` scores (question, steps) pairs with any of them:

* ``value``: the sigmoid of a scalar value head at each step's last token (ttc_jax's own
  PRMs; Skywork-o1-Open-PRM's style).
* ``token_pair``: an LM's probability of a "good" token against a "bad" one, read at a
  step tag: Math-Shepherd writes ``"{question} {step 1} ки\\n{step 2} ки..."`` and reads
  "+" vs "-" at each " ки"; RLHFlow's PRMs make each step a user turn and read "+" vs "-"
  where the assistant answers it (the earlier steps' answers are "+").
* ``classifier``: a 2-label head's probability of label 1 at a separator token:
  Qwen2.5-Math-PRM writes the steps as one assistant turn, each followed by ``<extra_0>``.

A PRM's input for the first k steps is a text ``texts[k]`` whose last token is where step
k's score is read, and each ``texts[k]`` is a prefix of ``texts[k + 1]``: a causal PRM then
gives step k the same score whatever follows it. So scoring is incremental: the PRM's KV
cache is extended by the tokens that ``texts[k + 1]`` adds to ``texts[k]`` and the score
read at the last of them, one chunk per step (:meth:`AdaptedPRM.start` / :meth:`step`),
and a finished solution is scored in one forward pass reading at every step's position
(:meth:`full_scores`). Tokens are those of the whole text (the PRM's tokenizer encodes
each ``texts[k]``); where a tokenizer would merge across a step boundary so that the
tokens of ``texts[k]`` are not a prefix of those of ``texts[k + 1]``, incremental scoring
is not exact and :meth:`step` raises :class:`FormatError`: re-score in full instead.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from flax import nnx

from ttc_jax.models.transformer import Transformer
from ttc_jax.sampling.core import CachedModel
from ttc_jax.sampling.core import DecodeState


class FormatError(ValueError):
  """A solution that a PRM format cannot score as asked (named in the message)."""


class PRMTokenizer(Protocol):
  """What an adapter needs of a tokenizer (ttc_jax.hf_tokenizer.HFTokenizer has it)."""

  pad_id: int

  def encode(self, text: str) -> list[int]: ...

  def render_chat(self, messages, *, add_generation_prompt: bool = True) -> str: ...


Readout = Literal["value", "token_pair", "classifier"]


@dataclasses.dataclass(frozen=True)
class PRMFormat:
  """How a PRM reads a solution.

  layout: 'plain': ``question + question_sep + step 1 + tag + step_sep + step 2 + tag ...``
    (Math-Shepherd: sep " ", tag " ки", step_sep "\\n"); 'assistant': the chat template's
    prompt for [system, user: question], then each step + tag (Qwen2.5-Math-PRM: tag
    "<extra_0>"); 'turns': each step a user turn (the first prefixed by the question and
    question_sep), each earlier one answered by an assistant turn ``good`` (RLHFlow).
  readout: see the module docstring; ``good`` / ``bad``: the tokens of 'token_pair'.
  """

  name: str
  readout: Readout
  layout: Literal["plain", "assistant", "turns"] = "plain"
  tag: str = ""
  question_sep: str = " "
  step_sep: str = ""
  system: str | None = None
  good: str = "+"
  bad: str = "-"

  def __post_init__(self):
    if self.readout not in ("value", "token_pair", "classifier"):
      raise ValueError(f"readout={self.readout!r}: expected 'value', 'token_pair' or "
                       "'classifier'.")
    if self.layout not in ("plain", "assistant", "turns"):
      raise ValueError(f"layout={self.layout!r}: expected 'plain', 'assistant' or 'turns'.")

  def texts(self, tokenizer: PRMTokenizer, question: str, steps: Sequence[str]) -> list[str]:
    """``texts[k]``: the PRM's input up to the read position of step k (0-based)."""
    if not steps:
      raise FormatError(f"{self.name}: a solution needs at least one step.")
    if self.layout == "turns":
      out, chat = [], []
      for k, step in enumerate(steps):
        chat.append({"role": "user",
                     "content": (question + self.question_sep + step) if k == 0 else step})
        out.append(tokenizer.render_chat(chat, add_generation_prompt=True))
        chat.append({"role": "assistant", "content": self.good})
      return out
    if self.layout == "assistant":
      chat = ([{"role": "system", "content": self.system}] if self.system else [])
      head = tokenizer.render_chat(chat + [{"role": "user", "content": question}],
                                   add_generation_prompt=True)
      sep = ""
    else:
      head, sep = question + self.question_sep, self.step_sep
    out, text = [], head
    for k, step in enumerate(steps):
      text += (sep if k else "") + step + self.tag
      out.append(text)
    return out


# The formats of the public PRMs (their model cards' recipes).
MATH_SHEPHERD = PRMFormat("math-shepherd", "token_pair", "plain", tag=" ки", question_sep=" ",
                          step_sep="\n")
RLHFLOW = PRMFormat("rlhflow", "token_pair", "turns", question_sep=" ")
QWEN_PRM = PRMFormat("qwen2.5-math-prm", "classifier", "assistant", tag="<extra_0>",
                     system="Please reason step by step, and put your final answer within "
                            "\\boxed{}.")
VALUE_AT_STEP_ENDS = PRMFormat("value", "value", "plain", question_sep="\n\n", step_sep="\n\n")
FORMATS = {f.name: f for f in (MATH_SHEPHERD, RLHFLOW, QWEN_PRM, VALUE_AT_STEP_ENDS)}


def _single_id(tokenizer: PRMTokenizer, text: str, what: str) -> int:
  ids = tokenizer.encode(text)
  if len(ids) != 1:
    raise FormatError(f"{what} {text!r} is {len(ids)} tokens {ids}; expected exactly one.")
  return ids[0]


def _outputs_at(graphdef, params, tokens, valid, positions, columns):
  """Head outputs at ``positions`` (B, K) of each row; an LM head's only at ``columns``."""
  model: Transformer = nnx.merge(graphdef, params)
  hidden, _ = model(tokens, valid, readout="hidden")
  picked = jnp.take_along_axis(hidden, positions[:, :, None], axis=1)
  out = model.apply_head(picked)
  return out if columns is None else jnp.take(out, jnp.asarray(columns), axis=-1)


_OUTPUTS_AT = jax.jit(_outputs_at, static_argnums=(0,), static_argnames=("columns",))


class AdaptedPRM:
  """A PRM (a checkpoint's model, its tokenizer, its :class:`PRMFormat`) scoring steps.

  :meth:`full_scores` scores whole solutions; :meth:`start` / :meth:`step` score them one
  step at a time on the PRM's own KV cache (the same prefill / extend / gather as every
  model of ttc_jax: :class:`~ttc_jax.sampling.core.CachedModel`). Both give the same
  scores (tested against transformers).
  """

  def __init__(self, model: Transformer, tokenizer: PRMTokenizer, fmt: PRMFormat, mesh=None):
    head = model.config.head
    want = {"value": "value", "token_pair": "lm", "classifier": "classifier"}[fmt.readout]
    if head != want:
      raise FormatError(f"format {fmt.name!r} reads a {want!r} head; the model has {head!r}.")
    self.model, self.format, self.tokenizer = model, fmt, tokenizer
    self.cached = CachedModel(model, mesh=mesh, pad_id=tokenizer.pad_id)
    self._columns = None
    if fmt.readout == "token_pair":
      self._columns = (_single_id(tokenizer, fmt.good, "good token"),
                       _single_id(tokenizer, fmt.bad, "bad token"))

  # -------------------------------------------------------------- encoding
  def encode(self, question: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
    """The PRM's token ids of a solution and the position of each step's score."""
    texts = self.format.texts(self.tokenizer, question, steps)
    ids = self.tokenizer.encode(texts[-1])
    ends = [len(self.tokenizer.encode(t)) for t in texts[:-1]] + [len(ids)]
    return ids, [e - 1 for e in ends]

  def _probs(self, out: np.ndarray) -> np.ndarray:
    """Scores from head outputs (..., ) values or (..., 2) label / token-pair logits."""
    out = np.asarray(out, np.float32)
    if self.format.readout == "value":
      return scipy.special.expit(out)
    p = scipy.special.softmax(out, axis=-1)
    return p[..., 0] if self.format.readout == "token_pair" else p[..., 1]

  # ------------------------------------------------------------- full passes
  def full_scores(self, solutions: Sequence[tuple[str, Sequence[str]]]) -> list[np.ndarray]:
    """Each solution's per-step scores from one forward pass over the batch (right padded)."""
    encoded = [self.encode(q, steps) for q, steps in solutions]
    width = max(len(ids) for ids, _ in encoded)
    k = max(len(pos) for _, pos in encoded)
    if width > self.cached.config.max_seq_len:
      raise FormatError(f"a solution is {width} PRM tokens; the PRM's context is "
                        f"{self.cached.config.max_seq_len}.")
    tokens = np.full((len(encoded), width), self.tokenizer.pad_id, np.int32)
    positions = np.zeros((len(encoded), k), np.int32)
    for i, (ids, pos) in enumerate(encoded):
      tokens[i, :len(ids)] = ids
      positions[i, :len(pos)] = pos
    out = _OUTPUTS_AT(self.cached.graphdef, self.cached.params, tokens, _valid(encoded, width),
                      positions, columns=self._columns)
    scores = self._probs(np.asarray(out))
    return [scores[i, :len(pos)] for i, (_, pos) in enumerate(encoded)]

  # ------------------------------------------------------------ incremental
  def start(self, questions: Sequence[str], *, cache_size: int) -> "StepState":
    """A state holding no step yet of each question's solution."""
    return StepState(questions=list(questions), steps=[[] for _ in questions],
                     fed=[[] for _ in questions], decode=None, cache_size=cache_size)

  def step(self, state: "StepState", steps: Sequence[str | None]) -> tuple["StepState", np.ndarray]:
    """Adds one step to each row (None: the row adds nothing and keeps its last score);
    returns the new state and each row's score of its latest step (NaN before any)."""
    if len(steps) != len(state.questions):
      raise ValueError(f"{len(steps)} steps for {len(state.questions)} rows.")
    chunks = []
    for i, step in enumerate(steps):
      if step is None:
        chunks.append([])
        continue
      new_steps = state.steps[i] + [step]
      ids = self.tokenizer.encode(self.format.texts(self.tokenizer, state.questions[i],
                                                    new_steps)[-1])
      fed = state.fed[i]
      if ids[:len(fed)] != fed:
        raise FormatError(
            f"{self.format.name}: after step {len(new_steps)} of row {i} the tokens of the text "
            "so far are not an extension of those already scored (the tokenizer merges "
            "across the step boundary): score this solution with full_scores.")
      if len(ids) == len(fed):
        raise FormatError(f"{self.format.name}: step {len(new_steps)} of row {i} ({step!r}) "
                          "adds no PRM token.")
      chunks.append(ids[len(fed):])
      state.steps[i], state.fed[i] = new_steps, ids
    width = max(1, max(len(c) for c in chunks))
    tokens = np.full((len(chunks), width), self.tokenizer.pad_id, np.int32)
    valid = np.zeros((len(chunks), width), bool)
    for i, c in enumerate(chunks):
      tokens[i, :len(c)], valid[i, :len(c)] = c, True
    if state.decode is None:
      decode = self.cached.prefill(tokens, valid, cache_size=state.cache_size)
    else:
      decode = self.cached.extend(state.decode, tokens, valid)
    state.decode = decode
    out = np.asarray(decode.logits)[:decode.num_rows]
    if self._columns is not None:
      out = out[:, list(self._columns)]
    scores = self._probs(out)
    return state, np.where([bool(s) for s in state.steps], scores, np.nan)


def _valid(encoded, width: int) -> np.ndarray:
  valid = np.zeros((len(encoded), width), bool)
  for i, (ids, _) in enumerate(encoded):
    valid[i, :len(ids)] = True
  return valid


@dataclasses.dataclass
class StepState:
  """Incremental scoring state: each row's question, steps and PRM tokens fed so far."""

  questions: list[str]
  steps: list[list[str]]
  fed: list[list[int]]
  decode: DecodeState | None
  cache_size: int
