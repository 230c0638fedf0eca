"""Tiny Hugging Face files for the tests: BPE tokenizers with chat templates, and
randomly initialised checkpoints (nothing is downloaded)."""

import json
import os

import tokenizers
import torch
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import trainers

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


def write_tokenizer(directory, *, template, config_extra, generation_eos, special=SPECIAL,
                    use_regex=False, split_newlines=False):
  """A byte-level BPE tokenizer of 300 ids (``special`` first, in order) trained on CORPUS,
  written as a checkpoint's tokenizer.json / tokenizer_config.json / generation_config.json.
  use_regex: GPT-2's pre-tokenizer split (a word takes the space before it: "q " + "First"
  encodes as "q", " First"). split_newlines: every newline is a token of its own, so "\n\n"
  is always written as two tokens (as GPT-2-style and byte-fallback tokenizers often do)."""
  tok = tokenizers.Tokenizer(models.BPE())
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
  tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"),
                                                byte_level])
                       if split_newlines else byte_level)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=300, special_tokens=list(special),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  os.makedirs(directory, exist_ok=True)
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"chat_template": template, "tokenizer_class": "PreTrainedTokenizerFast",
               **config_extra}, f)
  with open(os.path.join(directory, "generation_config.json"), "w") as f:
    json.dump({"eos_token_id": generation_eos}, f)
  return tok


def randomize(module: torch.nn.Module, seed: int) -> None:
  """Every parameter redrawn at std 0.3 (norms, biases and heads all matter)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def write_step_classifier(directory, config, seed: int):
  """A Qwen2.5-Math-PRM-layout checkpoint (Qwen2 backbone under ``model.``; ``score``:
  Linear, ReLU, Linear to 2 labels) of random weights. Returns (backbone, score) modules."""
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  backbone = transformers.Qwen2Model(config).eval()
  d = config.hidden_size
  score = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.ReLU(), torch.nn.Linear(d, 2))
  for i, module in enumerate((backbone, score)):
    randomize(module, seed=seed + i)
  tensors = {f"model.{k}": v for k, v in backbone.state_dict().items()}
  tensors.update({f"score.{k}": v for k, v in score.state_dict().items()})
  os.makedirs(directory, exist_ok=True)
  safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()},
                              os.path.join(directory, "model.safetensors"))
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump({**config.to_dict(), "architectures": ["Qwen2ForProcessRewardModel"],
               "num_labels": 2}, f)
  return backbone, score


# The tiny checkpoints of experiments/math_qwen.py's smoke run (tests/test_math_study.py,
# launch/tiny_checkpoints.py): Qwen2 architectures at width 32.
SMOKE_VOCAB = 320
_SMOKE_ARCH = dict(vocab_size=SMOKE_VOCAB, hidden_size=32, intermediate_size=64,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   max_position_embeddings=1024, bos_token_id=None, eos_token_id=2,
                   pad_token_id=0)
_QUESTIONS = ["What is $2 + 3$?", "Compute $\\frac{1}{2} + \\frac{1}{3}$.",
              "Let $x = 3$. What is $2x$?", "How many primes are less than 10?"]


def math_data(directory: str, shared: str | None) -> str:
  """``shared`` (shared/data) when it holds the MATH-500 and GSM8K files, else a few
  problems in its JSON Lines format written to ``directory``."""
  if shared and all(os.path.isfile(os.path.join(shared, *f))
                    for f in (("math", "test.jsonl"), ("gsm8k", "test.jsonl"))):
    return shared
  rows = {"math": [{"problem": q, "solution": f"The answer is $\\boxed{{{i}}}$.",
                    "answer": str(i), "level": 1 + i % 5} for i, q in enumerate(_QUESTIONS * 3)],
          "gsm8k": [{"question": q, "answer": f"It is {i}.\n#### {i}"}
                    for i, q in enumerate(_QUESTIONS * 3)]}
  names = {"math": ("test.jsonl", "train_reconstructed.jsonl"),
           "gsm8k": ("test.jsonl", "train.jsonl")}
  for task, files in names.items():
    os.makedirs(os.path.join(directory, task), exist_ok=True)
    for name in files:
      with open(os.path.join(directory, task, name), "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows[task]) + "\n")
  return directory


def write_math_smoke(root: str, shared: str | None) -> dict[str, str]:
  """Random tiny checkpoints of math_qwen's architectures under ``root``: a Qwen2 chat LM
  (``policy``) and a Qwen2.5-Math-PRM-layout step classifier (``prm``), and the data folder
  (``data``). Returns their paths."""
  import transformers  # pylint: disable=g-import-not-at-top
  policy, prm = os.path.join(root, "policy"), os.path.join(root, "prm")
  extra = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
  write_tokenizer(policy, template=CHATML, generation_eos=[2, 0], config_extra=extra)
  lm = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
      **_SMOKE_ARCH, tie_word_embeddings=False)).eval()
  randomize(lm, seed=41)
  lm.save_pretrained(policy)
  write_tokenizer(prm, template=CHATML, special=SPECIAL + ["<extra_0>"], generation_eos=[2, 0],
                  config_extra=extra)
  write_step_classifier(prm, transformers.Qwen2Config(**_SMOKE_ARCH), seed=42)
  return {"policy": policy, "prm": prm, "data": math_data(os.path.join(root, "data"), shared)}
