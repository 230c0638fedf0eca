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
                    use_regex=False):
  """A byte-level BPE tokenizer of 300 ids (``special`` first, in order) trained on CORPUS,
  written as a checkpoint's tokenizer.json / tokenizer_config.json / generation_config.json.
  use_regex: GPT-2's pre-tokenizer split (a word takes the space before it: "q " + "First"
  encodes as "q", " First")."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
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
