"""Tokenizers of imported checkpoints: Hugging Face ``tokenizers`` for the text, transformers'
own renderer for chat templates (so a prompt is byte-identical to ``apply_chat_template``).

A checkpoint directory holds tokenizer.json, tokenizer_config.json (special tokens, the
chat template, unless it is in chat_template.jinja) and optionally generation_config.json
(the EOS ids generation stops at; chat models often have several).

Steps: a step ends at any token whose text completes the step delimiter ("\\n\\n" for
MATH-style solutions): a token whose text contains it (:attr:`HFTokenizer.step_ids`), or
one that starts with the delimiter's rest right after a token that ends with its first
part ("\\n" then "\\n": :attr:`HFTokenizer.step_pairs`). The sampling core stops on both
(the pair within one sampling call).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Sequence

import numpy as np


class TokenizerError(ValueError):
  """A tokenizer directory that cannot be read: the message says what is missing."""


def _content(token) -> str | None:
  return token.get("content") if isinstance(token, dict) else token


def _read_json(path: str) -> dict[str, Any]:
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      out = json.load(f)
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    raise TokenizerError(f"{path} is not valid JSON ({e}): the file is damaged.") from None
  if not isinstance(out, dict):
    raise TokenizerError(f"{path}: expected a JSON object, found {type(out).__name__}.")
  return out


class HFTokenizer:
  """A ``tokenizers.Tokenizer`` with the special ids and chat template of its checkpoint."""

  def __init__(self, tokenizer, *, special_tokens: dict[str, str], eos_ids: Sequence[int],
               chat_template: str | None = None, step_delimiter: str = "\n\n",
               add_bos: bool = False):
    self.tokenizer = tokenizer
    self.special_tokens = {k: v for k, v in special_tokens.items() if v is not None}
    self.chat_template = chat_template
    self.step_delimiter = step_delimiter
    self.add_bos = add_bos
    self.prompt_chat, self.prompt_system = False, None  # see with_prompt
    ids = lambda name: (None if name not in self.special_tokens
                        else tokenizer.token_to_id(self.special_tokens[name]))
    self._bos = ids("bos_token")
    eos = tuple(dict.fromkeys([i for i in [ids("eos_token"), *eos_ids] if i is not None]))
    if not eos:
      raise TokenizerError("the tokenizer has no EOS token: generation would never stop.")
    self._eos = eos
    pad = ids("pad_token")
    self._pad = eos[0] if pad is None else pad  # padded positions are masked: any id serves

  @classmethod
  def load(cls, directory: str, *, step_delimiter: str = "\n\n") -> "HFTokenizer":
    import tokenizers  # pylint: disable=g-import-not-at-top

    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
      raise TokenizerError(f"{directory} has no tokenizer.json (a Hugging Face fast tokenizer).")
    config = _read_json(os.path.join(directory, "tokenizer_config.json"))
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
      template = {t["name"]: t["template"] for t in template}.get("default")
    jinja = os.path.join(directory, "chat_template.jinja")
    if template is None and os.path.isfile(jinja):
      with open(jinja) as f:
        template = f.read()
    names = ("bos_token", "eos_token", "pad_token", "unk_token")
    special = {n: _content(config.get(n)) for n in names}
    special_map = _read_json(os.path.join(directory, "special_tokens_map.json"))
    special.update({n: _content(special_map[n]) for n in names
                    if special.get(n) is None and n in special_map})
    gen = _read_json(os.path.join(directory, "generation_config.json")).get("eos_token_id")
    eos_ids = [] if gen is None else [gen] if isinstance(gen, int) else list(gen)
    try:
      tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # pylint: disable=broad-except
      raise TokenizerError(f"{path} is not a Hugging Face tokenizer ({type(e).__name__}: "
                           f"{str(e)[:200]}): the file is damaged or of another kind.") from None
    return cls(tokenizer, special_tokens=special, eos_ids=eos_ids,
               chat_template=template, step_delimiter=step_delimiter,
               add_bos=bool(config.get("add_bos_token", False)))

  # ------------------------------------------------------------------ ids
  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  @property
  def pad_id(self) -> int:
    return self._pad

  @property
  def bos_id(self) -> int | None:
    return self._bos

  @property
  def eos_id(self) -> int:
    return self._eos[0]

  @property
  def eos_ids(self) -> tuple[int, ...]:
    return self._eos

  @property
  def suppress_ids(self) -> tuple[int, ...]:
    return ()

  @functools.cached_property
  def _texts(self) -> list[str]:
    """Each id's own text (special tokens included)."""
    return [self.tokenizer.decode([i], skip_special_tokens=False)
            for i in range(self.vocab_size)]

  @functools.cached_property
  def step_ids(self) -> tuple[int, ...]:
    """Every id whose text contains the step delimiter (EOS ids excluded)."""
    return tuple(i for i, text in enumerate(self._texts)
                 if i not in self._eos and self.step_delimiter in text)

  @functools.cached_property
  def step_pairs(self) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """The delimiter split over two tokens: for each split D = a + b, (the ids whose text
    ends with a, the ids whose text starts with b); neither holds the whole delimiter nor
    an EOS id. A step ends at the second of two such tokens in a row."""
    d, step = self.step_delimiter, set(self.step_ids)
    plain = [(i, t) for i, t in enumerate(self._texts)
             if t and i not in self._eos and i not in step]
    out = []
    for k in range(1, len(d)):
      before = tuple(i for i, t in plain if t.endswith(d[:k]))
      after = tuple(i for i, t in plain if t.startswith(d[k:]))
      if before and after:
        out.append((before, after))
    return tuple(out)

  def id_to_piece(self, token_id: int) -> str:
    return self.tokenizer.id_to_token(int(token_id))

  def check_vocab(self, model_vocab_size: int) -> None:
    """Every id the tokenizer produces must index the model's embedding (checkpoints often
    pad the embedding past the tokenizer's vocabulary, never the other way)."""
    if self.vocab_size > model_vocab_size:
      raise TokenizerError(f"the tokenizer has {self.vocab_size} ids, the model's embedding "
                           f"only {model_vocab_size}: they are not from the same checkpoint.")

  # ---------------------------------------------------------------- text
  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
    ids = self.tokenizer.encode(text, add_special_tokens=False).ids
    if bos:
      if self._bos is None:
        raise TokenizerError("bos=True, but the tokenizer has no BOS token.")
      ids = [self._bos] + ids
    return ids + [self.eos_id] if eos else ids

  def with_prompt(self, *, chat: bool, system: str | None = None) -> "HFTokenizer":
    """How :meth:`encode_prompt` frames a task's prompt: ``chat`` renders it as the user
    turn of the chat template (after a ``system`` turn when given) with the assistant's
    generation prompt, as an instruct model expects; else it is plain text (BOS first
    when the checkpoint adds one)."""
    if chat and not self.chat_template:
      raise TokenizerError("chat prompts asked for, but this tokenizer has no chat template "
                           "(tokenizer_config.json or chat_template.jinja).")
    if system is not None and not chat:
      raise TokenizerError("a system prompt needs chat prompts (chat=True).")
    self.prompt_chat, self.prompt_system = chat, system
    return self

  def encode_prompt(self, text: str) -> list[int]:
    """A task prompt's ids, framed as :meth:`with_prompt` says (default: plain text)."""
    if self.prompt_chat:
      messages = ([{"role": "system", "content": self.prompt_system}]
                  if self.prompt_system is not None else [])
      return self.encode_chat(messages + [{"role": "user", "content": text.strip()}])
    return self.encode(text, bos=self.add_bos and self._bos is not None)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

  def encode_batch(self, texts: Sequence[str], *, bos: bool = False) -> list[list[int]]:
    return [self.encode(t, bos=bos) for t in texts]

  def decode_batch(self, tokens: np.ndarray) -> list[str]:
    return [self.decode(row) for row in np.asarray(tokens)]

  def render_chat(self, messages: Sequence[dict[str, str]], *,
                  add_generation_prompt: bool = True, **kwargs) -> str:
    """The chat ``messages`` as the model's template renders them (transformers' renderer,
    with the special tokens as template variables, as ``apply_chat_template`` does)."""
    if not self.chat_template:
      raise TokenizerError("this tokenizer has no chat template (tokenizer_config.json or "
                           "chat_template.jinja): format prompts as plain text instead.")
    from transformers.utils import chat_template_utils  # pylint: disable=g-import-not-at-top

    rendered, _ = chat_template_utils.render_jinja_template(
        conversations=[list(messages)], chat_template=self.chat_template,
        add_generation_prompt=add_generation_prompt, **{**self.special_tokens, **kwargs})
    return rendered[0]

  def encode_chat(self, messages: Sequence[dict[str, str]], **kwargs) -> list[int]:
    """Token ids of the rendered chat (the template writes BOS itself when it has one)."""
    return self.encode(self.render_chat(messages, **kwargs))
