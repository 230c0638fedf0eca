"""Tokenizers of imported checkpoints against transformers' own tokenizer of the same files."""

import pytest
import transformers

from hf_fixtures import CHATML
from hf_fixtures import LLAMA3
from hf_fixtures import SPECIAL
from hf_fixtures import write_tokenizer
from ttc_jax.tokenizers.hf import HFTokenizer
from ttc_jax.tokenizers.hf import TokenizerError

@pytest.fixture(scope="module", params=["chatml", "llama3"])
def tokenizer_dir(request, tmp_path_factory):
  d = str(tmp_path_factory.mktemp(request.param))
  if request.param == "chatml":  # Qwen2.5's layout: EOS <|im_end|>, pad <|endoftext|>
    write_tokenizer(d, template=CHATML, generation_eos=[2, 0],
           config_extra={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
  else:  # Llama 3's: BOS written by the template, EOS ids from generation_config
    write_tokenizer(d, template=LLAMA3, generation_eos=[0, 6],
           config_extra={"bos_token": "<|begin_of_text|>", "eos_token": "<|endoftext|>"})
  return request.param, d


MESSAGES = [{"role": "system", "content": "Solve step by step."},
            {"role": "user", "content": "What is 12 + 30?  "}]


def test_chat_template_matches_apply_chat_template(tokenizer_dir):
  name, d = tokenizer_dir
  ours = HFTokenizer.load(d)
  theirs = transformers.PreTrainedTokenizerFast.from_pretrained(d)
  for gen in (True, False):
    text = theirs.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=gen)
    assert ours.render_chat(MESSAGES, add_generation_prompt=gen) == text, name
    want = theirs.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=gen)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    assert ours.encode_chat(MESSAGES, add_generation_prompt=gen) == list(want), name


def test_special_ids(tokenizer_dir):
  name, d = tokenizer_dir
  tok = HFTokenizer.load(d)
  ids = {s: i for i, s in enumerate(SPECIAL)}
  if name == "chatml":
    assert tok.eos_ids == (ids["<|im_end|>"], ids["<|endoftext|>"])
    assert tok.pad_id == ids["<|endoftext|>"] and tok.bos_id is None
    with pytest.raises(TokenizerError, match="no BOS"):
      tok.encode("x", bos=True)
  else:
    assert tok.eos_ids == (ids["<|endoftext|>"], ids["<|eot_id|>"])
    assert tok.bos_id == ids["<|begin_of_text|>"] and tok.pad_id == tok.eos_id
    assert tok.encode("x", bos=True)[0] == tok.bos_id


def test_step_ids_end_steps_and_text_round_trips(tokenizer_dir):
  _, d = tokenizer_dir
  tok = HFTokenizer.load(d)
  assert tok.step_ids, "training on '\\n\\n'-separated text must merge a delimiter token"
  assert all("\n\n" in tok.tokenizer.decode([i]) for i in tok.step_ids)
  text = "Let x = 3.\n\nThen 2x = 6.\n\nThe answer is 6."
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert sum(i in tok.step_ids for i in ids) == 2  # one stop per delimiter
  tok.check_vocab(tok.vocab_size)
  with pytest.raises(TokenizerError, match=r"embedding only 10"):
    tok.check_vocab(10)


def test_errors(tmp_path):
  with pytest.raises(TokenizerError, match="no tokenizer.json"):
    HFTokenizer.load(str(tmp_path))
  write_tokenizer(str(tmp_path / "plain"), template=None, generation_eos=[0],
         config_extra={"eos_token": "<|endoftext|>"})
  with pytest.raises(TokenizerError, match="no chat template"):
    HFTokenizer.load(str(tmp_path / "plain")).render_chat(MESSAGES)


def test_a_delimiter_split_over_two_tokens_ends_a_step(tokenizer_dir):
  """"...\\n" then "\\n..." completes "\\n\\n": the pair ends a step where the text has the
  delimiter, and ids that hold it whole are not in any pair."""
  from ttc_jax.sampling.solutions import step_ends
  _, d = tokenizer_dir
  tok = HFTokenizer.load(d)
  assert tok.step_pairs, "the byte-level vocabulary has '\\n' (and words ending in it)"
  for before, after in tok.step_pairs:
    assert all(tok.tokenizer.decode([i]).endswith("\n") for i in before)
    assert all(tok.tokenizer.decode([i]).startswith("\n") for i in after)
    assert not set(before + after) & set(tok.step_ids + tok.eos_ids)
  (before, after), = tok.step_pairs
  newline = tok.encode("\n")
  assert len(newline) == 1 and newline[0] in before and newline[0] in after
  ids = tok.encode("Let x") + newline + newline + tok.encode("So 2x = 6.") + [tok.eos_id]
  assert "\n\n" in tok.decode(ids)
  ends = step_ends(ids, tok.step_ids, tok.eos_ids, tok.step_pairs)
  assert ends == [len(tok.encode("Let x")) + 1, len(ids) - 1]
  assert step_ends(ids, tok.step_ids, tok.eos_ids) == [len(ids) - 1]  # without the pairs
