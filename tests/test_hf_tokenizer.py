"""Tokenizers of imported checkpoints against transformers' own tokenizer of the same files."""

import json
import os

import pytest
import tokenizers
import transformers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import trainers

from ttc_jax.hf_tokenizer import HFTokenizer
from ttc_jax.hf_tokenizer import TokenizerError

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
          "<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
          "{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
           "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CORPUS = [
    "Let x = 3.\n\nThen 2x = 6.\n\nThe answer is $\\boxed{6}$.",
    "First, add the numbers.\n\nSecond: 12 + 30 = 42.\n\nSo the answer is 42.",
    "We have $\\frac{1}{2} + \\frac{1}{3} = \\frac{5}{6}$.\n\nFinal answer: 5/6",
] * 20


def _write(directory, *, template, config_extra, generation_eos):
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=300, special_tokens=SPECIAL,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  os.makedirs(directory, exist_ok=True)
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"chat_template": template, "tokenizer_class": "PreTrainedTokenizerFast",
               **config_extra}, f)
  with open(os.path.join(directory, "generation_config.json"), "w") as f:
    json.dump({"eos_token_id": generation_eos}, f)
  return tok


@pytest.fixture(scope="module", params=["chatml", "llama3"])
def tokenizer_dir(request, tmp_path_factory):
  d = str(tmp_path_factory.mktemp(request.param))
  if request.param == "chatml":  # Qwen2.5's layout: EOS <|im_end|>, pad <|endoftext|>
    _write(d, template=CHATML, generation_eos=[2, 0],
           config_extra={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
  else:  # Llama 3's: BOS written by the template, EOS ids from generation_config
    _write(d, template=LLAMA3, generation_eos=[0, 6],
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
  _write(str(tmp_path / "plain"), template=None, generation_eos=[0],
         config_extra={"eos_token": "<|endoftext|>"})
  with pytest.raises(TokenizerError, match="no chat template"):
    HFTokenizer.load(str(tmp_path / "plain")).render_chat(MESSAGES)
