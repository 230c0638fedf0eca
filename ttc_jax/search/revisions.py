"""Sequential revisions (Snell et al. 2024, section 6): revision chains as a batch on the
sampling core.

A chain's answer l is written by the revision model after the task's revision prompt
showing the chain's last ``window`` answers (:func:`ttc_jax.tasks.base.
encode_revision_prompt`, the tokenization of training); answer 0 sees the plain prompt,
so it is the revision model's own first attempt (not the policy's; the paper's k = 0
trajectories train exactly that). Chain c has length ``lengths[c]``; chains of
different lengths run side by side.

How it runs (one step of every chain at a time, never a per-chain loop over tokens):

* each problem's question prefix (BOS + the policy's prompt, the first piece of every
  revision prompt, so its tokens are a prefix of each) is prefilled once; its KV cache
  is gathered to the problem's chains at every step and reused there;
* step l of all chains that reach it is a batch: gather the prefixes, extend them by
  each row's windowed attempts and the repeated question (one compiled call), then one
  sampling call. A step's rows are grouped by their extension's width (rounded up to a
  multiple of 64), so no row pays for another's longer attempts (the extension is most of
  a chain's cost: an answer of ~40 tokens re-reads up to 4 earlier ones), and each group is
  cut into calls of power-of-two sizes (its count's binary digits), so almost no call runs
  on padding rows. On the revision sweep's chains (48 answers for each of 200 train
  problems; 2 cores, AMD EPYC) this took 38 s warm against 63 s with power-of-two widths
  and calls of up to 512 padded rows, the same tokens; the first run, from an empty
  compilation cache, 103 s against 102 s. More shapes compile: the revision ORM and sweep
  stages alone from an empty cache took 322 s against 293 s; in ``make study`` (one cache
  for every stage) the four chain stages took 1262 s against 1409 s;
* or, with ``segment``, by continuous batching across steps (:func:`serving.serve_queue`):
  a chain's next answer joins the queue as soon as its last one ends (the chains with the
  most answers left first), every revision prompt prefilled whole. On the same chains, 128
  slots: decode utilization 0.90 against the static steps' 0.60, but 65 s against 38 s
  warm on CPU (see :mod:`ttc_jax.sampling.serving`).

Keys: answer l of chain c of problem i draws from ``keys(seed, stream, split, i, c, l,
run)``, and everything a row sees is its own (its windowed prompt, its token cap, the
model context), so a chain's answers do not depend on the other chains or problems in
the batch, and a prefix of a chain is the chain a shorter run would have produced.

Context: a revision prompt longer than the model context minus one token is an error
naming the problem, chain and step (raise ``revision_model.max_seq_len``); an answer
that runs into the context stops there unfinished, like any other truncated answer
(no final answer), and is still shown to the next revision.

Budget (the paper's accounting, prefill included): each answer is one generation; the
revision model runs each problem's prefix once, then for every answer its extension
(windowed attempts + the repeated question) and its generated tokens.
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Callable, Sequence

import jax
import numpy as np

from ttc_jax.progress import Progress
from ttc_jax.sampling import serving
from ttc_jax.sampling import streams
from ttc_jax.sampling import utilization
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.sampling.solutions import Generations
from ttc_jax.sampling.solutions import left_pad
from ttc_jax.sampling.solutions import round_up
from ttc_jax.search.tree import bucket
from ttc_jax.tasks.base import encode_revision_prompt
from ttc_jax.tasks.base import shown_attempts

EXTEND_MULTIPLE = 64  # extension widths: a multiple of this


@dataclasses.dataclass(frozen=True)
class RevisionChains:
  """Chains of the given ``lengths`` (chain c has ``lengths[c]`` answers), each answer
  conditioned on the chain's last ``window`` answers."""

  lengths: tuple[int, ...]
  window: int = 4
  # The sampling temperature of an answer written after earlier ones (a revision; None: the
  # sampling parameters' own, as the first answer's). Beyond the paper: a revision at a lower
  # temperature slips less when it keeps what its context holds.
  revision_temperature: float | None = None

  def __post_init__(self):
    lengths = tuple(self.lengths)
    if not lengths or any(not isinstance(n, (int, np.integer)) or n < 1 for n in lengths):
      raise ValueError(f"lengths={self.lengths!r}: expected a non-empty tuple of integers "
                       ">= 1 (one per chain).")
    if not isinstance(self.window, int) or self.window < 1:
      raise ValueError(f"window={self.window!r}: expected an integer >= 1 earlier answers.")
    object.__setattr__(self, "lengths", tuple(int(n) for n in lengths))
    t = self.revision_temperature
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0):
      raise ValueError(f"revision_temperature={t!r}: expected None or a temperature >= 0.")

  def params_for(self, sp: SamplingParams, step: int, seeded: bool) -> SamplingParams:
    """The sampling parameters of answer ``step`` (a revision once anything is in context:
    a later step, or any step of a seeded chain)."""
    if self.revision_temperature is None or (step == 0 and not seeded):
      return sp
    return dataclasses.replace(sp, temperature=float(self.revision_temperature))

  @property
  def generations(self) -> int:
    return sum(self.lengths)


@dataclasses.dataclass
class Answer:
  """One answer of a chain: its tokens as sampled (EOS included when it finished), the
  revision prompt it was written after, and its grade."""

  tokens: list[int]
  prompt: list[int]  # BOS + revision prompt pieces (the prefix included)
  text: str
  answer: str | None  # None when unfinished (cut by its cap or the context)
  correct: bool
  finished: bool
  extension_tokens: int  # prompt tokens past the shared prefix, run for this answer
  # (len(tokens), 3): each sampled token's log-probability and confidence under the model
  # that wrote it (SampleOutput.token_stats), which a confidence verifier reads.
  token_stats: np.ndarray


@dataclasses.dataclass
class ProblemChains:
  """A problem's chains (``chains[c][l]``: answer l of chain c) and its shared prefix;
  ``seeds[c]``: texts written by another model (e.g. search's best candidate) that chain c
  shows before its first answer, as if they were its earlier answers (none by default)."""

  problem: object
  prefix: list[int]
  chains: list[list[Answer]]
  seeds: list[list[str]] | None = None

  def policy_tokens(self, chains: int | None = None, length: int | None = None) -> int:
    """Tokens the revision model ran for the first ``chains`` chains cut to ``length``
    answers (all by default): the prefix once, then every answer's extension and
    generated tokens."""
    return len(self.prefix) + sum(a.extension_tokens + len(a.tokens)
                                  for chain in self.chains[:chains] for a in chain[:length])


def run_chains(strategy: RevisionChains, core: SamplingCore, tokenizer, task,
               problems: Sequence, *, seed: int, stream: str, sp: SamplingParams,
               run: int = 0, rows_per_call: int = 512, segment: int | None = None,
               seeds: Sequence[Sequence[Sequence[str]]] | None = None,
               log_fn: Callable[[str], None] | None = None) -> list[ProblemChains]:
  """Runs ``strategy``'s chains on ``problems`` (see the module docstring). ``segment``:
  by continuous batching across steps instead (:func:`serving.serve_queue`,
  ``rows_per_call`` slots refilled every ``segment`` decode steps; every revision prompt
  prefilled whole): the same answers.
  ``seeds[q][c]``: texts chain c of problem q shows before its own answers (search then
  revise: the revision model revises another model's answer); the window counts them."""
  if sp.stop_at_step:
    raise ValueError("revision chains sample whole answers: sp.stop_at_step must be False.")
  num = len(problems)
  context = core.config.max_seq_len
  prefixes = [encode_revision_prompt(tokenizer, task, p, []) for p in problems]
  width = round_up(max(len(p) for p in prefixes), 16)
  # Slots: the prefix, the widest extension (at most the context, rounded up) and the
  # answer. Slots are storage: every row still stops at the model context.
  size = width + bucket_width(context) + sp.max_new_tokens
  tokens, valid = left_pad(prefixes, width, tokenizer.pad_id)
  _check_context(problems, prefixes, context, 0, 0)
  # Static steps extend each problem's prefix, prefilled once (served steps prefill whole).
  base = core.prefill(tokens, valid, cache_size=size) if segment is None else None
  if seeds is not None and (len(seeds) != num or any(len(s) != len(strategy.lengths)
                                                     for s in seeds)):
    raise ValueError(f"seeds: expected one list of seed texts per chain ({len(strategy.lengths)})"
                     f" for each of the {num} problems.")
  out = [ProblemChains(problem=p, prefix=prefix, chains=[[] for _ in strategy.lengths],
                       seeds=None if seeds is None else [list(x) for x in seeds[q]])
         for q, (p, prefix) in enumerate(zip(problems, prefixes))]
  lengths = np.asarray(strategy.lengths)
  total = num * int(lengths.sum())
  kwargs = {} if log_fn is None else {"log_fn": log_fn}
  split = np.asarray([streams.split_id(p.split) for p in problems], np.int64)
  index = np.asarray([p.index for p in problems], np.int64)
  if segment is not None:
    # Continuous batching across steps: a chain's next answer joins the queue as soon as its
    # last one ends. One queue per run of steps sampled alike (a revision temperature
    # differs from the first answer's).
    for steps, step_sp in _phases(strategy, sp, int(lengths.max()), seeds is not None):
      queue = _ChainQueue(tokenizer, task, strategy, out, steps, seed=seed, stream=stream,
                          run=run, split=split, index=index, context=context,
                          limit=step_sp.max_new_tokens)
      used = serving.serve_queue(core, queue, step_sp, slots=rows_per_call, segment=segment,
                                 pad_multiple=EXTEND_MULTIPLE,
                                 desc=f"revision answers {steps.start + 1}-{steps.stop}",
                                 **kwargs)
      utilization.record(used.row_steps, used.alive_steps, used.calls, used.idle_steps)
    return out
  progress = Progress(total, "revision answers", unit="answers", **kwargs)
  for step in range(int(lengths.max())):
    step_sp = strategy.params_for(sp, step, seeds is not None)
    chains = np.flatnonzero(lengths > step)
    rows = [(q, int(c)) for q in range(num) for c in chains]
    prompts = [_prompt(tokenizer, task, strategy, out[q], c, step, context) for q, c in rows]
    # Rows grouped by their extension's padded width (no row pays for a longer one's
    # attempts, in the extension nor in the decode window after it), each group cut into
    # calls of power-of-two sizes (the binary digits of its count: no padding rows but the
    # last call's few).
    groups: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
      groups.setdefault(bucket_width(len(prompt) - len(out[rows[i][0]].prefix)), []).append(i)
    for _, members in sorted(groups.items()):
      at = 0
      for size in call_sizes(len(members), rows_per_call):
        part = members[at:at + size]
        at += size
        _step(core, tokenizer, task, step_sp, seed, stream, run, base, out,
              [rows[i] for i in part], [prompts[i] for i in part], step, split, index)
        progress.update(len(part))
  return out


def _prompt(tokenizer, task, strategy, pc: ProblemChains, chain: int, step: int, context: int
            ) -> list[int]:
  """The revision prompt of answer ``step`` of ``chain``: the chain's last answers."""
  seeded = [] if pc.seeds is None else list(pc.seeds[chain])
  shown = shown_attempts(seeded + [a.text for a in pc.chains[chain]], strategy.window)
  prompt = encode_revision_prompt(tokenizer, task, pc.problem, shown)
  if prompt[:len(pc.prefix)] != pc.prefix:  # guaranteed by the pieces; an override could break it
    raise ValueError(f"task {task.name!r}: the revision prompt of problem {pc.problem.uid} "
                     "does not start with the tokens of its plain prompt; "
                     "revision_prompt_pieces must begin with format_prompt(problem).")
  _check_context([pc.problem], [prompt], context, chain, step)
  return prompt


def bucket_width(n: int) -> int:
  """An extension's padded width: a multiple of EXTEND_MULTIPLE."""
  return EXTEND_MULTIPLE * -(-max(n, 1) // EXTEND_MULTIPLE)


def call_sizes(n: int, most: int) -> list[int]:
  """Sizes of the calls that take ``n`` rows, at most ``most`` each: the largest power of
  two that fits, then the next (n's binary digits), and a last call of fewer than 8 rows
  (padded to 8 by ``_step``; calls of at most ``most`` < 8 rows are padded alike). A handful
  of compiled shapes, and no call runs on padding rows but that last one's."""
  if n < 0 or most < 1:
    raise ValueError(f"call_sizes(n={n}, most={most}): expected n >= 0 rows and most >= 1.")
  top = 1 << (most.bit_length() - 1)
  out = []
  while n > 0:
    size = min(n, most) if n < 8 or top < 8 else min(top, 1 << (n.bit_length() - 1))
    out.append(size)
    n -= size
  return out


def _check_context(problems, prompts, context: int, chain: int, step: int) -> None:
  for problem, prompt in zip(problems, prompts):
    if len(prompt) + 1 > context:
      raise ValueError(
          f"problem {problem.uid}, chain {chain}, revision {step}: the revision prompt "
          f"has {len(prompt)} tokens; the revision model's context is {context} tokens "
          "(max_seq_len), which leaves no room for an answer. Raise revision_model."
          "max_seq_len or lower the window.")


def _phases(strategy: RevisionChains, sp: SamplingParams, steps: int, seeded: bool
            ) -> list[tuple[range, SamplingParams]]:
  """The runs of consecutive steps sampled with the same parameters."""
  out: list[tuple[range, SamplingParams]] = []
  for step in range(steps):
    params = strategy.params_for(sp, step, seeded)
    if out and out[-1][1] == params:
      out[-1] = (range(out[-1][0].start, step + 1), params)
    else:
      out.append((range(step, step + 1), params))
  return out


class _ChainQueue:
  """Answers ``steps`` of every chain as a queue for :func:`serving.serve_queue`: an answer
  is ready once its chain's previous one is recorded (its revision prompt shows it). The
  chains with the most answers left go first (a chain's answers are sequential: started
  last, a long chain would run alone at the end), then the shortest prompts. Keys and
  records as :func:`_step`'s."""

  def __init__(self, tokenizer, task, strategy, out, steps: range, *, seed, stream, run,
               split, index, context, limit):
    self.tokenizer, self.task, self.strategy, self.out = tokenizer, task, strategy, out
    self.context, self.limit = context, limit
    self.ends = [min(n, steps.stop) for n in strategy.lengths]  # a chain's last step + 1
    # Every answer of the phase has its key before any is sampled (one call): id r is
    # answer steps_of[r] of chain chain_of[r] of problem problem_of[r].
    place = [(q, c, step) for q in range(len(out)) for c, end in enumerate(self.ends)
             for step in range(steps.start, end)]
    self.total, self.place = len(place), place
    self.ids = {x: r for r, x in enumerate(place)}
    q_of, c_of, step_of = (np.asarray(col, np.int64) for col in zip(*place))
    keys = streams.keys(seed, stream, split[q_of], index[q_of], c_of, step_of, run)
    self.key_impl = jax.random.key_impl(keys)
    self.key_data = np.asarray(jax.random.key_data(keys))
    self.max_prompt = context - 1  # _prompt checks each prompt against the context
    self.prompts: dict[int, list[int]] = {}
    self.heap: list[tuple] = []
    for q in range(len(out)):
      for c, end in enumerate(self.ends):
        if end > steps.start:
          self._push(q, c, steps.start)

  def _push(self, q: int, c: int, step: int) -> None:
    prompt = _prompt(self.tokenizer, self.task, self.strategy, self.out[q], c, step,
                     self.context)
    r = self.ids[(q, c, step)]
    self.prompts[r] = prompt
    heapq.heappush(self.heap, (step - self.ends[c], len(prompt), q, c, step, r))

  def ready(self) -> int:
    return len(self.heap)

  def take(self, k: int) -> serving.Requests:
    ids = [heapq.heappop(self.heap)[-1] for _ in range(k)]
    return serving.Requests(ids=ids, prompts=[self.prompts[r] for r in ids],
                            key_data=self.key_data[ids],
                            limits=np.full((k,), self.limit, np.int32))

  def finish(self, rid, tokens, logprobs, confidence, stopped) -> None:
    q, c, step = self.place[rid]
    prompt = self.prompts.pop(rid)
    _record(self.tokenizer, self.task, self.out, q, c, tokens.tolist(), prompt, stopped,
            len(prompt) - len(self.out[q].prefix),
            np.concatenate([logprobs[:, None], confidence], axis=-1))
    if step + 1 < self.ends[c]:
      self._push(q, c, step + 1)
def _record(tokenizer, task, out, q, c, toks, prompt, finished, extension, stats) -> None:
  """Appends one answer to chain ``c`` of problem ``q``."""
  text = tokenizer.decode(toks)
  problem = out[q].problem
  answer = task.extract_answer(text) if finished else None
  out[q].chains[c].append(Answer(
      tokens=toks, prompt=prompt, text=text, answer=answer,
      correct=bool(finished and answer is not None and task.is_correct(text, problem)),
      finished=finished, extension_tokens=extension, token_stats=stats))


def _step(core, tokenizer, task, sp, seed, stream, run, base, out, part, prompts, step, split,
          index):
  """Answer ``step`` of the chains ``part`` ([(problem, chain)]) after ``prompts``, in one
  batch."""
  n = len(part)
  padded_n = bucket(n)
  q_of = np.asarray([q for q, _ in part], np.int64)
  c_of = np.asarray([c for _, c in part], np.int64)
  extensions = [prompt[len(out[q].prefix):] for (q, _), prompt in zip(part, prompts)]
  src = np.concatenate([q_of, np.repeat(q_of[:1], padded_n - n)])
  state = core.gather(base, src)
  longest = max(len(e) for e in extensions)
  if longest:
    ext = np.full((padded_n, bucket_width(longest)), tokenizer.pad_id, np.int32)
    ext_valid = np.zeros(ext.shape, bool)
    for r, e in enumerate(extensions):
      ext[r, :len(e)] = e
      ext_valid[r, :len(e)] = True
    state = core.extend(state, ext, ext_valid)
  pad = lambda x: np.concatenate([x, np.repeat(x[:1], padded_n - n)])  # noqa: E731
  keys = streams.keys(seed, stream, pad(split[q_of]), pad(index[q_of]), pad(c_of), step, run)
  # Not shrinking (sample's shrink): on the study's chains (200 per step, contexts to 512
  # tokens) it made no step faster and added a compile per batch size.
  active = np.arange(padded_n) < n
  result = core.sample(state, keys, sp, active=active)
  lengths = np.asarray(result.lengths)
  gen = np.asarray(result.tokens)
  stopped = np.asarray(result.stopped)
  stats = result.token_stats()
  utilization.record_call(result, active)  # the padding rows are idle
  for r, (q, c) in enumerate(part):
    _record(tokenizer, task, out, q, c, gen[r, :lengths[r]].tolist(), prompts[r],
            bool(stopped[r]), len(extensions[r]), stats[r, :lengths[r]])


def answers_arrays(pcs: list[ProblemChains]) -> dict[str, np.ndarray]:
  """Every answer of ``pcs`` as a verifier row (its revision prompt + its tokens), its
  correctness (the revision ORM's data), its place (problem, chain, step) and its sampled
  tokens' statistics (``token_stats``, zeros past its ``generated`` tokens: what a confidence
  measure reads)."""
  answers = [(q, c, step, a) for q, pc in enumerate(pcs) for c, chain in enumerate(pc.chains)
             for step, a in enumerate(chain)]
  rows = [a.prompt + a.tokens for *_, a in answers]
  tokens = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  stats = np.zeros((len(rows), max(len(a.tokens) for *_, a in answers), 3), np.float32)
  for i, (*_, a) in enumerate(answers):
    stats[i, :len(a.tokens)] = a.token_stats
  return {"tokens": tokens, "lengths": np.asarray([len(r) for r in rows], np.int32),
          "correct": np.asarray([a.correct for *_, a in answers], bool),
          "step": np.asarray([step for _, _, step, _ in answers], np.int32),
          "chain": np.asarray([c for _, c, _, _ in answers], np.int32),
          "generated": np.asarray([len(a.tokens) for *_, a in answers], np.int32),
          "token_stats": stats,
          "problem_index": np.asarray([pcs[q].problem.index for q, *_ in answers], np.int64)}


def answer_pool(pcs: list[ProblemChains], width: int, pad_id: int
                ) -> tuple[Generations, np.ndarray, int]:
  """Every answer of each problem's chains as that problem's samples (the revision model's
  own answers: on-policy revision data): row ``q * K + s`` is answer s of problem q (chain
  by chain, step by step), K = the answers per problem. Returns the generations (``width``
  token columns, ``pad_id`` after each row), their correctness and K."""
  per = {sum(len(chain) for chain in pc.chains) for pc in pcs}
  if len(per) != 1:
    raise ValueError(f"every problem needs the same number of answers; got {sorted(per)}.")
  answers = [a for pc in pcs for chain in pc.chains for a in chain]
  longest = max((len(a.tokens) for a in answers), default=0)
  if longest > width:
    raise ValueError(f"an answer has {longest} tokens; width={width} columns.")
  tokens = np.full((len(answers), width), pad_id, np.int32)
  for i, a in enumerate(answers):
    tokens[i, :len(a.tokens)] = a.tokens
  gens = Generations(tokens=tokens, lengths=np.asarray([len(a.tokens) for a in answers], np.int32),
                     stopped=np.asarray([a.finished for a in answers], bool))
  return gens, np.asarray([a.correct for a in answers], bool), per.pop()
