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
is not exact: :meth:`step` then re-scores that row in full (its cache emptied, its whole
text fed again, the tokens counted in the budget).
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
from ttc_jax.sampling.cached import CachedModel
from ttc_jax.sampling.cached import DecodeState
from ttc_jax.sampling.solutions import round_up
from ttc_jax.sampling.solutions import step_ends
from ttc_jax.sampling.solutions import stop_sets
from ttc_jax.verifiers.batching import map_by_length


class FormatError(ValueError):
  """A solution that a PRM format cannot score as asked (named in the message)."""


class PRMTokenizer(Protocol):
  """What an adapter needs of a tokenizer (ttc_jax.tokenizers.hf.HFTokenizer has it)."""

  pad_id: int

  def encode(self, text: str, *, bos: bool = False) -> list[int]: ...

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
  bos: bool = False  # the text starts with the tokenizer's BOS (Mistral's encode adds <s>)

  def __post_init__(self):
    if self.readout not in ("value", "token_pair", "classifier"):
      raise ValueError(f"readout={self.readout!r}: expected 'value', 'token_pair' or "
                       "'classifier'.")
    if self.layout not in ("plain", "assistant", "turns"):
      raise ValueError(f"layout={self.layout!r}: expected 'plain', 'assistant' or 'turns'.")

  @property
  def model_head(self) -> str:
    """The head of the model the format reads (TransformerConfig.head)."""
    return {"value": "value", "token_pair": "lm", "classifier": "classifier"}[self.readout]

  def head(self, tokenizer: PRMTokenizer, question: str) -> str:
    """The text every solution of ``question`` starts with (before its first step's own
    text): the common prefix of two one-step solutions."""
    a, b = (self.texts(tokenizer, question, [s])[0] for s in ("A", "B"))
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
      n += 1
    return a[:n]

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
                          step_sep="\n", bos=True)
RLHFLOW = PRMFormat("rlhflow", "token_pair", "turns", question_sep=" ")
QWEN_PRM = PRMFormat("qwen2.5-math-prm", "classifier", "assistant", tag="<extra_0>",
                     system="Please reason step by step, and put your final answer within "
                            "\\boxed{}.")
VALUE_AT_STEP_ENDS = PRMFormat("value", "value", "plain", question_sep="\n\n", step_sep="\n\n")
FORMATS = {f.name: f for f in (MATH_SHEPHERD, RLHFLOW, QWEN_PRM, VALUE_AT_STEP_ENDS)}


def encode_solution(fmt: PRMFormat, tokenizer: PRMTokenizer, question: str,
                    steps: Sequence[str]) -> tuple[list[int], list[int]]:
  """A PRM's token ids of a solution in ``fmt`` and the position of each step's score."""
  ids_of = lambda text: tokenizer.encode(text, bos=fmt.bos)
  texts = fmt.texts(tokenizer, question, steps)
  ids = ids_of(texts[-1])
  ends = [len(ids_of(t)) for t in texts[:-1]] + [len(ids)]
  return ids, [e - 1 for e in ends]


def step_text(policy_tokenizer, ids) -> str | None:
  """A policy step's text as a PRM reads it: decoded, EOS dropped, the step delimiter and
  surrounding space stripped (None: nothing is left)."""
  eos = set(policy_tokenizer.eos_ids)
  text = policy_tokenizer.decode([int(i) for i in ids if int(i) not in eos]).strip()
  return text or None


def ends_step(policy_tokenizer, tokens: Sequence[int]) -> bool:
  """Whether the last of ``tokens`` ends a step by the policy's rule: a delimiter id, an
  EOS, or the second token of a delimiter split over two (step_pairs)."""
  if not tokens:
    return False
  stops, pairs = stop_sets(policy_tokenizer.step_ids, policy_tokenizer.eos_ids,
                           policy_tokenizer.step_pairs)
  last = int(tokens[-1])
  return last in stops or (len(tokens) > 1 and any(int(tokens[-2]) in a and last in b
                                                   for a, b in pairs))


def step_spans(policy_tokenizer, generation: Sequence[int]) -> list[tuple[int, int]]:
  """(first, last) token of each step of a generation (policy tokens after the prompt)."""
  ends = step_ends(list(generation), policy_tokenizer.step_ids, policy_tokenizer.eos_ids,
                   policy_tokenizer.step_pairs)
  return list(zip([0] + [e + 1 for e in ends[:-1]], ends))


def step_texts(policy_tokenizer, generation: Sequence[int]) -> list[str | None]:
  """Each step's text of a finished generation (None: a span that is no step)."""
  gen = [int(t) for t in generation]
  return [step_text(policy_tokenizer, gen[a:b + 1])
          for a, b in step_spans(policy_tokenizer, gen)]


def solution_lengths(fmt: PRMFormat, tokenizer: PRMTokenizer, policy_tokenizer,
                     questions: Sequence[str], generations: Sequence[Sequence[int]]
                     ) -> np.ndarray:
  """The PRM tokens of each finished policy generation written in ``fmt`` (0: no step);
  tokenization only, no model."""
  out = []
  for q, gen in zip(questions, generations):
    steps = [t for t in step_texts(policy_tokenizer, gen) if t is not None]
    text = fmt.texts(tokenizer, q, steps)[-1] if steps else None
    out.append(0 if text is None else len(tokenizer.encode(text, bos=fmt.bos)))
  return np.asarray(out, np.int64)


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
    want = fmt.model_head
    if head != want:
      raise FormatError(f"format {fmt.name!r} reads a {want!r} head; the model has {head!r}.")
    self.model, self.format, self.tokenizer = model, fmt, tokenizer
    self._columns = self.check_tokenizer(tokenizer, fmt)
    self.cached = CachedModel(model, mesh=mesh, pad_id=tokenizer.pad_id)

  @staticmethod
  def check_tokenizer(tokenizer: PRMTokenizer, fmt: PRMFormat) -> tuple[int, int] | None:
    """Raises FormatError when ``tokenizer`` cannot write ``fmt`` (no chat template for a
    chat layout; a good / bad token that is not one token); returns the token pair's ids."""
    if fmt.layout != "plain":
      try:
        fmt.head(tokenizer, "?")
      except ValueError as e:  # the tokenizer's TokenizerError: no chat template
        raise FormatError(f"format {fmt.name!r} writes chat turns: {e}") from e
    if fmt.readout != "token_pair":
      return None
    return (_single_id(tokenizer, fmt.good, "good token"),
            _single_id(tokenizer, fmt.bad, "bad token"))

  # -------------------------------------------------------------- encoding
  def _ids(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, bos=self.format.bos)

  def encode(self, question: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
    """The PRM's token ids of a solution and the position of each step's score."""
    return encode_solution(self.format, self.tokenizer, question, steps)

  def _probs(self, out: np.ndarray) -> np.ndarray:
    """Scores from head outputs (..., ) values or (..., 2) label / token-pair logits."""
    out = np.asarray(out, np.float32)
    if self.format.readout == "value":
      return scipy.special.expit(out)
    p = scipy.special.softmax(out, axis=-1)
    return p[..., 0] if self.format.readout == "token_pair" else p[..., 1]

  # ------------------------------------------------------------- full passes
  def full_scores(self, solutions: Sequence[tuple[str, Sequence[str]]], *,
                  batch_size: int | None = None) -> list[np.ndarray]:
    """Each solution's per-step scores from full forward passes: ``batch_size`` solutions
    per pass (default: all), in order of length (each pass padded to its own longest),
    rows split over the 'data' axis and the passes over the processes."""
    encoded = [self.encode(q, steps) for q, steps in solutions]
    if not encoded:
      return []
    longest = max(len(ids) for ids, _ in encoded)
    if longest > self.cached.config.max_seq_len:
      raise FormatError(f"a solution is {longest} PRM tokens; the PRM's context is "
                        f"{self.cached.config.max_seq_len}.")
    n = len(encoded)
    size = round_up(batch_size or n, self.cached.data_size)

    def run(chunk: np.ndarray) -> list[np.ndarray]:
      # Widths rounded up to multiples of 8: few compiled shapes.
      width = min(round_up(max(len(encoded[i][0]) for i in chunk), 8),
                  self.cached.config.max_seq_len)
      steps = round_up(max(len(encoded[i][1]) for i in chunk), 8)
      tokens, valid = _right_padded([encoded[i][0] for i in chunk], self.tokenizer.pad_id,
                                    width)
      positions, _ = _right_padded([encoded[i][1] for i in chunk], 0, steps)
      out = _OUTPUTS_AT(self.cached.graphdef, self.cached.params,
                        self.cached.put_rows(tokens, self.tokenizer.pad_id),
                        self.cached.put_rows(valid, False), self.cached.put_rows(positions, 0),
                        columns=self._columns)
      scores = self._probs(np.asarray(out))
      return [scores[j, :len(encoded[i][1])] for j, i in enumerate(chunk)]

    return map_by_length([len(ids) for ids, _ in encoded], size, run)

  # ------------------------------------------------------------ incremental
  def start(self, questions: Sequence[str], *, cache_size: int) -> "StepState":
    """A state of each question with no step yet: the PRM's cache holds the text every
    solution starts with (:meth:`PRMFormat.head`) but its last token, which a tokenizer
    may merge with the first step's text (" " + "First" -> " First"): it is fed with the
    first step. A solution with no step scores 0."""
    fed = [self._ids(self.format.head(self.tokenizer, q))[:-1] for q in questions]
    tokens, valid = _right_padded(fed, self.tokenizer.pad_id)
    decode = self.cached.prefill(tokens, valid, cache_size=cache_size)
    return StepState(decode=decode, questions=list(questions), steps=[[] for _ in fed],
                     fed=fed, last=np.zeros(len(fed), np.float32),
                     consumed=np.asarray([len(f) for f in fed], np.int64),
                     rescores=np.zeros(len(fed), np.int64), pending=[[] for _ in fed],
                     pending_added=np.zeros(len(fed), bool))

  def gather(self, state: "StepState", rows, compact: bool = False) -> "StepState":
    """Re-selects rows (tree expansion), as CachedModel.gather."""
    rows = np.asarray(rows)
    return StepState(decode=self.cached.gather(state.decode, rows, compact=compact),
                     questions=[state.questions[r] for r in rows],
                     steps=[list(state.steps[r]) for r in rows],
                     fed=[list(state.fed[r]) for r in rows], last=state.last[rows].copy(),
                     consumed=state.consumed[rows].copy(), rescores=state.rescores[rows].copy(),
                     pending=[list(state.pending[r]) for r in rows],
                     pending_added=state.pending_added[rows].copy())

  def step(self, state: "StepState", steps: Sequence[str | None],
           continues: Sequence[bool] | None = None) -> tuple["StepState", np.ndarray]:
    """Adds one step to each row (None: the row adds nothing and keeps its score);
    returns the state and each row's score of its latest step. The state is updated in
    place (its cache is donated), only once every row's step is known to be valid.
    ``continues[i]``: row i's text replaces its last step instead (that step was cut
    short and has gone on: the whole step is scored, re-scoring the row in full).

    Where the tokenizer merges across the step boundary (the tokens of the text so far
    do not extend those already fed), the row is re-scored in full: its cache is emptied
    and its whole text fed again, and those tokens count in ``state.consumed`` (the
    budget's PRM tokens) and ``state.rescores``."""
    if len(steps) != len(state.questions):
      raise ValueError(f"{len(steps)} steps for {len(state.questions)} rows.")
    continues = [False] * len(steps) if continues is None else list(continues)
    if len(continues) != len(steps) or any(c and not state.steps[i]
                                           for i, c in enumerate(continues)):
      raise ValueError("continues: one flag per row, True only for a row with a step.")
    context = self.cached.config.max_seq_len
    chunks, new = [], {}
    rescore = np.zeros(len(steps), bool)
    for i, step in enumerate(steps):
      if step is None:
        chunks.append([])
        continue
      new_steps = state.steps[i][:-1 if continues[i] else None] + [step]
      ids = self._ids(self.format.texts(self.tokenizer, state.questions[i], new_steps)[-1])
      fed = state.fed[i]
      if ids[:len(fed)] != fed:
        rescore[i] = True
        fed = []
      if len(ids) == len(fed):
        raise FormatError(f"{self.format.name}: step {len(new_steps)} of row {i} ({step!r}) "
                          "adds no PRM token.")
      if len(ids) > context:
        raise FormatError(f"{self.format.name}: row {i} is {len(ids)} PRM tokens after step "
                          f"{len(new_steps)}; the PRM's context is {context}.")
      chunks.append(ids[len(fed):])
      new[i] = (new_steps, ids)
    if not new:
      return state, state.last
    # Chunk widths rounded up (few compiled shapes); the cache compacted when the shared
    # write index would run past its slots (rows that added less leave holes), and grown
    # when a full re-score still does not fit.
    width = -(-max(len(c) for c in chunks) // 8) * 8
    decode = state.decode
    if rescore.any():
      decode = self.cached.reset_rows(decode, rescore)
    if int(decode.cache.index) + width > decode.cache.size:
      decode = self.cached.gather(decode, np.arange(decode.num_rows), compact=True)
    if int(decode.cache.index) + width > decode.cache.size:
      decode = self.cached.grow(decode, int(decode.cache.index) + width)
    tokens, valid = _right_padded(chunks, self.tokenizer.pad_id, width)
    state.decode = self.cached.extend(decode, tokens, valid)
    for i, (new_steps, ids) in new.items():
      state.steps[i], state.fed[i] = new_steps, ids
      state.consumed[i] += len(chunks[i])
    state.rescores += rescore
    out = np.asarray(state.decode.logits)[:state.decode.num_rows]
    if self._columns is not None:
      out = out[:, list(self._columns)]
    state.last = np.where([bool(c) for c in chunks], self._probs(out),
                          state.last).astype(np.float32)
    return state, state.last


def _right_padded(rows: Sequence[Sequence[int]], pad_id: int, width: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
  width = max(1, width, max(len(r) for r in rows))
  tokens = np.full((len(rows), width), pad_id, np.int32)
  valid = np.zeros((len(rows), width), bool)
  for i, r in enumerate(rows):
    tokens[i, :len(r)], valid[i, :len(r)] = r, True
  return tokens, valid


@dataclasses.dataclass
class StepState:
  """Partial solutions as an adapted PRM sees them: its KV cache (``decode``) and, per
  row, the question, the steps so far (text), the PRM tokens of the text so far (``fed``:
  what the cache holds), the latest step's score (0 before the first: a solution with no
  step scores 0), the PRM tokens processed so far (``consumed``: ``fed`` plus every full
  re-score's tokens; what the budget counts) and the number of full re-scores. ``pending``:
  the policy tokens of a step that was cut short and has not ended yet (``pending_added``:
  it is already the last of ``steps``), kept by :class:`PolicyBridge`."""

  decode: DecodeState
  questions: list[str]
  steps: list[list[str]]
  fed: list[list[int]]
  last: np.ndarray
  consumed: np.ndarray
  rescores: np.ndarray
  pending: list[list[int]]
  pending_added: np.ndarray

  @property
  def num_rows(self) -> int:
    return self.decode.num_rows

  @property
  def cache(self):
    return self.decode.cache


# ----------------------------------------------------------------------------
# The search's PRM interface over an adapted PRM
# ----------------------------------------------------------------------------
class PolicyTokenizer(Protocol):
  step_ids: Sequence[int]
  eos_ids: Sequence[int]
  step_pairs: Sequence[tuple[Sequence[int], Sequence[int]]]

  def decode(self, ids) -> str: ...


class PolicyBridge:
  """An :class:`AdaptedPRM` as a :class:`~ttc_jax.verifiers.base.Verifier` of the policy's
  solutions: fed the policy's tokens, it reads them in its own format and tokens.

  Each chunk of policy tokens the search feeds a row is one step: decoded with the
  policy's tokenizer (its step delimiter and surrounding space stripped), written in the
  PRM's format, and the tokens that text adds are fed to the PRM's cache (one extend per
  step, as :meth:`AdaptedPRM.step`). A chunk that decodes to nothing (an EOS alone) adds
  no step and keeps the row's score. The PRM's prompt is the question's text, not the
  policy's prompt: :meth:`prefill_questions`.

  A step the search cuts at its ``max_step_tokens`` (its chunk ends without a step
  delimiter or EOS) is scored as it stands, a partial step, so that the search can select
  on it; when it goes on, the next chunk is joined to it and the whole step replaces it
  (:meth:`AdaptedPRM.step` with ``continues``): the row is re-scored in full, those PRM
  tokens counted. A step cap above the policy's usual step lengths keeps this rare (the
  real-model experiment sets one); best-of-N never cuts.
  """

  def __init__(self, prm: AdaptedPRM, policy_tokenizer: PolicyTokenizer):
    self.prm, self.policy_tokenizer = prm, policy_tokenizer
    self.config = prm.cached.config

  def prefill_questions(self, questions: Sequence[str], *, cache_size: int) -> StepState:
    return self.prm.start(questions, cache_size=cache_size)

  @staticmethod
  def cache_slack(max_step_tokens: int) -> int:
    """KV slots past its context a search's state keeps: a few steps' worth (its tokens are
    not the policy's; a row re-scored in full may grow it further: AdaptedPRM.step)."""
    return 4 * max_step_tokens + 16

  def start(self, problems: Sequence, tokens, valid, *, cache_size: int,
            max_step_tokens: int) -> StepState:
    """Its prompt is each problem's question in its format (not the policy's prompt)."""
    del tokens, valid, cache_size
    return self.prefill_questions([p.question for p in problems],
                                  cache_size=self.config.max_seq_len
                                  + self.cache_slack(max_step_tokens))

  def tokens_fed(self, state: StepState) -> np.ndarray:
    return self.lengths(state)

  def solution_step_scores(self, questions: Sequence[str], rows: Sequence[Sequence[int]],
                           prompt_lengths: Sequence[int], ends: Sequence[Sequence[int]], *,
                           batch_size: int) -> list[np.ndarray]:
    """:meth:`solution_scores` of each row's generation (its steps split as ``ends`` does)."""
    del ends
    return self.solution_scores(questions, [r[n:] for r, n in zip(rows, prompt_lengths)],
                                batch_size=batch_size)

  def solution_tokens(self, questions: Sequence[str], rows: Sequence[Sequence[int]],
                      prompt_lengths: Sequence[int]) -> np.ndarray:
    return self.solution_lengths(questions, [r[n:] for r, n in zip(rows, prompt_lengths)])

  def gather(self, state: StepState, rows, compact: bool = False) -> StepState:
    return self.prm.gather(state, rows, compact=compact)

  def scores(self, state: StepState) -> np.ndarray:
    return state.last

  def lengths(self, state: StepState) -> np.ndarray:
    """The PRM tokens each row has processed so far, full re-scores included (the budget
    counts these, not the policy's; a re-score's tokens are counted at the positions after
    the row's earlier ones, so its attention FLOPs are an upper bound)."""
    return state.consumed.copy()

  def _step_text(self, ids) -> str | None:
    return step_text(self.policy_tokenizer, ids)

  def cache_index(self, state: StepState) -> int:
    return int(state.cache.index)

  def extend(self, state: StepState, tokens, valid, confidence=None) -> StepState:
    """One step per row: its valid policy tokens (none: the row adds nothing); a row
    whose last step was cut short continues it."""
    del confidence  # it reads the steps' text
    tokens, valid = np.asarray(tokens), np.asarray(valid, bool)
    tok = self.policy_tokenizer
    steps, continues, wholes, closed = [], [], [], []
    for r in range(state.num_rows):
      chunk = [int(t) for t in tokens[r][valid[r]]]
      whole = state.pending[r] + chunk
      text = self._step_text(whole) if chunk else None
      cont = text is not None and bool(state.pending_added[r])
      if cont and text == state.steps[r][-1]:
        text, cont = None, False  # the continuation adds no text (an EOS, a space)
      steps.append(text)
      continues.append(cont)
      wholes.append(whole if chunk else None)
      closed.append(bool(chunk) and ends_step(tok, whole))
    state = self.prm.step(state, steps, continues)[0]
    for r in range(state.num_rows):
      if wholes[r] is None:
        continue  # nothing fed to this row
      added = bool(state.pending_added[r]) or steps[r] is not None
      state.pending[r] = [] if closed[r] else wholes[r]
      state.pending_added[r] = added and not closed[r]
    return state

  def _spans(self, generation: Sequence[int]) -> list[tuple[int, int]]:
    return step_spans(self.policy_tokenizer, generation)

  def _texts(self, generation: Sequence[int]) -> list[str | None]:
    return step_texts(self.policy_tokenizer, generation)

  def solution_scores(self, questions: Sequence[str], generations: Sequence[Sequence[int]], *,
                      batch_size: int) -> list[np.ndarray]:
    """Finished solutions scored in full passes (:meth:`AdaptedPRM.full_scores`,
    ``batch_size`` at a time): one score per policy step (as
    :func:`~ttc_jax.sampling.solutions.step_ends` splits them), NaN at a span that adds no
    step (an EOS alone; search skips those too): a solution with no step at all is all NaN
    (aggregated, it scores 0)."""
    texts, kept = [], []
    for q, gen in zip(questions, generations):
      steps = self._texts(gen)
      kept.append([t is not None for t in steps])
      texts.append((q, [t for t in steps if t is not None]))
    todo = [i for i, (_, steps) in enumerate(texts) if steps]
    scored = dict(zip(todo, self.prm.full_scores([texts[i] for i in todo],
                                                 batch_size=batch_size)))
    out = []
    for i, mask in enumerate(kept):
      row = np.full(len(mask), np.nan, np.float32)
      if i in scored:
        row[np.asarray(mask, bool)] = scored[i]
      out.append(row)
    return out

  def solution_lengths(self, questions: Sequence[str], generations: Sequence[Sequence[int]]
                       ) -> np.ndarray:
    """The PRM tokens of each finished solution in the PRM's own format (0: no step)."""
    return solution_lengths(self.prm.format, self.prm.tokenizer, self.policy_tokenizer,
                            questions, generations)

  def extend_scores(self, state: StepState, tokens, valid, confidence=None
                    ) -> tuple[StepState, np.ndarray]:
    """Whole solutions at once (best-of-N): each row's tokens split at the policy's step
    ends and fed one step at a time; returns each step's score at the position of its
    last token, NaN elsewhere and at a span that adds no step (an EOS alone)."""
    del confidence
    tokens, valid = np.asarray(tokens), np.asarray(valid, bool)
    out = np.full(tokens.shape, np.nan, np.float32)
    spans = [self._spans(tokens[r][valid[r]].tolist()) for r in range(tokens.shape[0])]
    for j in range(max((len(s) for s in spans), default=0)):
      steps = [self._step_text(tokens[r][sp[j][0]:sp[j][1] + 1]) if j < len(sp) else None
               for r, sp in enumerate(spans)]
      state, last = self.prm.step(state, steps)
      for r, sp in enumerate(spans):
        if steps[r] is not None:
          out[r, sp[j][1]] = last[r]
    return state, out
