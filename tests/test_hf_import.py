"""Hugging Face checkpoint import: parity with transformers on tiny random checkpoints.

Each family's checkpoint is a randomly initialised transformers model saved with
``save_pretrained`` (every parameter redrawn at std 0.3, so norms, biases and soft caps
all matter and greedy argmax margins are not razor-thin); the reference is that
directory loaded back by transformers (eager attention, float32).
"""

import json
import os

import numpy as np
import pytest
import torch
import transformers

from jax.sharding import PartitionSpec as P

from conftest import assert_close
from hf_fixtures import randomize
from hf_fixtures import write_step_classifier
from ttc_jax.models import hf_import
from ttc_jax.parallel import make_mesh
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.sampling.core import row_keys

V = 96
_COMMON = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
               bos_token_id=1, eos_token_id=2, pad_token_id=0)
FAMILIES = {
    # Llama 3.x: its RoPE scaling (original context shorter than the test rows, so every
    # band of the scaling is used) and tied embeddings (Llama 3.2 1B / 3B).
    "llama": lambda: transformers.LlamaConfig(
        **_COMMON, tie_word_embeddings=True, rope_parameters=dict(
            rope_type="llama3", rope_theta=500_000.0, factor=8.0, low_freq_factor=1.0,
            high_freq_factor=4.0, original_max_position_embeddings=8)),
    # Mistral (Math-Shepherd's base): Llama's layout with a sliding window of 4 on every
    # layer, shorter than the test rows.
    "mistral": lambda: transformers.MistralConfig(**_COMMON, sliding_window=4,
                                                  tie_word_embeddings=False),
    # Qwen2.5: q/k/v biases, untied embeddings, its RoPE base.
    "qwen2": lambda: transformers.Qwen2Config(
        **_COMMON, tie_word_embeddings=False, rope_parameters=dict(rope_theta=1_000_000.0,
                                                                   rope_type="default")),
    # Gemma: sqrt(d) embedding scale, (1 + w) norms, GeGLU (tanh), head_dim != d / heads.
    "gemma": lambda: transformers.GemmaConfig(**{**_COMMON, "num_key_value_heads": 1},
                                              head_dim=16),
    # Gemma 2: post norms, soft caps, query_pre_attn_scalar, sliding window of 4 on the
    # alternate layers (shorter than the rows, so the window matters).
    "gemma2": lambda: transformers.Gemma2Config(
        **_COMMON, head_dim=8, query_pre_attn_scalar=12, attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0, sliding_window=4),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def checkpoint(request, tmp_path_factory):
  """(family, directory, transformers reference loaded from it, our model)."""
  name = request.param
  directory = str(tmp_path_factory.mktemp(name))
  hf = transformers.AutoModelForCausalLM.from_config(FAMILIES[name](),
                                                     attn_implementation="eager")
  randomize(hf, seed=sorted(FAMILIES).index(name))
  # Qwen2 is written in shards (model.safetensors.index.json), the others in one file.
  hf.save_pretrained(directory, max_shard_size="40KB" if name == "qwen2" else "1GB")
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      directory, attn_implementation="eager", dtype=torch.float32).eval()
  return name, directory, ref, hf_import.load(directory, param_dtype="float32")


def _batch(rs, lengths, width, left: bool):
  tokens = np.zeros((len(lengths), width), np.int64)
  mask = np.zeros((len(lengths), width), bool)
  for i, n in enumerate(lengths):
    cols = slice(width - n, width) if left else slice(0, n)
    tokens[i, cols] = rs.randint(3, V, n)
    mask[i, cols] = True
  return tokens, mask


def _hf_logits(ref, tokens, mask):
  with torch.no_grad():
    return ref(input_ids=torch.from_numpy(tokens),
               attention_mask=torch.from_numpy(mask.astype(np.int64)),
               position_ids=torch.from_numpy(np.maximum(np.cumsum(mask, 1) - 1, 0))
               ).logits.numpy()


def _hf_greedy(ref, tokens, mask, n):
  """transformers' greedy continuation of exactly ``n`` tokens per row."""
  with torch.no_grad():
    return ref.generate(input_ids=torch.from_numpy(tokens),
                        attention_mask=torch.from_numpy(mask.astype(np.int64)),
                        do_sample=False, max_new_tokens=n, min_new_tokens=n,
                        pad_token_id=0).numpy()[:, tokens.shape[1]:]


@pytest.mark.parametrize("left", [True, False], ids=["left_padded", "right_padded"])
def test_logits_match_transformers(checkpoint, left):
  name, _, ref, model = checkpoint
  tokens, mask = _batch(np.random.RandomState(0), [14, 5, 1, 11], 14, left)
  ours = np.asarray(model(tokens, mask)[0])
  theirs = _hf_logits(ref, tokens, mask)
  assert ours.shape == theirs.shape == (4, 14, V)
  assert theirs[mask].std() > 0.3, "logits too flat for a meaningful comparison"
  assert_close(ours[mask], theirs[mask], err_msg=name)


def test_greedy_continuations_match_transformers(checkpoint):
  """The sampling core's greedy rows equal transformers' generate on a left-padded batch
  (12 new tokens: past Gemma 2's window of 4, through the cached decode path)."""
  name, _, ref, model = checkpoint
  tokens, mask = _batch(np.random.RandomState(1), [9, 3, 6], 9, left=True)
  n = 12
  theirs = _hf_greedy(ref, tokens, mask, n)
  out = SamplingCore(model).generate(tokens, mask, row_keys(0, np.arange(3)),
                                     SamplingParams(temperature=0.0, max_new_tokens=n))
  np.testing.assert_array_equal(np.asarray(out.tokens), theirs, err_msg=name)


# Each family on a tensor-parallel mesh: (data, model) shards. 4 'model' shards hold one
# query head each and replicate the 1-2 key/value heads; 2 shards split the 2 KV heads.
TP_MESH = {"llama": (4, 2), "mistral": (2, 4), "qwen2": (2, 4), "gemma": (2, 4),
           "gemma2": (4, 2)}


def test_tensor_parallel_import_matches_transformers(checkpoint):
  """Loaded straight onto a ('data', 'model') mesh, each device reading its own shards:
  the same greedy continuations as transformers."""
  name, directory, ref, _ = checkpoint
  mesh = make_mesh(*TP_MESH[name])
  model = hf_import.load(directory, param_dtype="float32", mesh=mesh)
  q = model.layers[0].attn.q[...]
  assert q.sharding.spec == P(None, "model")
  assert q.addressable_shards[0].data.shape[1] == q.shape[1] // mesh.shape["model"]
  tokens, mask = _batch(np.random.RandomState(2), [9, 3, 6, 8], 9, left=True)
  n = 8
  theirs = _hf_greedy(ref, tokens, mask, n)
  out = SamplingCore(model, mesh=mesh).generate(
      tokens, mask, row_keys(0, np.arange(4)), SamplingParams(temperature=0.0, max_new_tokens=n))
  np.testing.assert_array_equal(np.asarray(out.tokens), theirs, err_msg=name)


def test_config_mapping(checkpoint):
  name, directory, ref, model = checkpoint
  cfg = model.config
  assert cfg.num_params() == sum(p.numel() for p in ref.parameters())
  assert (cfg.vocab_size, cfg.d_model, cfg.num_layers) == (V, 32, 3)
  assert cfg.tie_embeddings == ref.config.tie_word_embeddings
  if name == "gemma2":
    assert cfg.layer_types == ("sliding", "full", "sliding") and cfg.sliding_window == 4
  if name == "mistral":
    assert cfg.layer_types == ("sliding",) * 3 and cfg.sliding_window == 4
  if name == "qwen2":
    assert os.path.isfile(os.path.join(directory, "model.safetensors.index.json"))


def _save_without_layer_types(hf, directory):
  """``save_pretrained``, then config.json without the ``layer_types`` transformers 5
  writes: the config of a Qwen2 checkpoint saved before layer_types existed."""
  hf.save_pretrained(directory)
  path = os.path.join(directory, "config.json")
  with open(path) as f:
    config = json.load(f)
  del config["layer_types"]
  with open(path, "w") as f:
    json.dump(config, f)


def test_qwen2_sliding_window_from_max_window_layers(tmp_path):
  """use_sliding_window=True without layer_types: transformers' Qwen2Config slides the
  window on layers max_window_layers.. only (here layers 1 and 2 of 3; layer 0 attends to
  everything). A window of 3 on rows of up to 14 tokens, so which layers slide matters."""
  cfg = transformers.Qwen2Config(**_COMMON, tie_word_embeddings=False, use_sliding_window=True,
                                 sliding_window=3, max_window_layers=1)
  hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
  randomize(hf, seed=11)
  _save_without_layer_types(hf, str(tmp_path))
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), attn_implementation="eager", dtype=torch.float32).eval()
  assert ref.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
  model = hf_import.load(str(tmp_path), param_dtype="float32")
  for left in (True, False):
    tokens, mask = _batch(np.random.RandomState(4), [14, 5, 1, 11], 14, left)
    theirs = _hf_logits(ref, tokens, mask)
    assert theirs[mask].std() > 0.3, "logits too flat for a meaningful comparison"
    assert_close(np.asarray(model(tokens, mask)[0])[mask], theirs[mask], err_msg=f"left={left}")
  assert model.config.layer_types == ("full", "sliding", "sliding")
  assert model.config.sliding_window == 3


def _qwen2_windows(**fields):
  """(layer_types, sliding_window) imported from a Qwen2 config.json holding ``fields`` of
  the four window keys (the others absent), checked against transformers' reading of it."""
  hf = {**transformers.Qwen2Config(**_COMMON).to_dict(), **fields}
  for name in ("use_sliding_window", "sliding_window", "max_window_layers", "layer_types"):
    if name not in fields:
      hf.pop(name, None)
  cfg = hf_import.config_from_hf(hf)
  theirs = transformers.Qwen2Config.from_dict(hf)
  names = {"sliding_attention": "sliding", "full_attention": "full"}
  assert (cfg.layer_types or ("full",) * cfg.num_layers) == tuple(
      names[t] for t in theirs.layer_types)
  if cfg.layer_types and "sliding" in cfg.layer_types:
    assert cfg.sliding_window == theirs.sliding_window
  return cfg.layer_types, cfg.sliding_window


def test_qwen2_sliding_window_rule():
  """Which layers slide, as transformers' Qwen2Config decides it (config.json keys that
  are absent take its defaults: sliding_window=4096, max_window_layers=28)."""
  full3 = ("full",) * 3
  assert _qwen2_windows(use_sliding_window=True, sliding_window=4, max_window_layers=2) == (
      ("full", "full", "sliding"), 4)
  assert _qwen2_windows(use_sliding_window=True, sliding_window=4, max_window_layers=0) == (
      ("sliding",) * 3, 4)
  assert _qwen2_windows(use_sliding_window=True, sliding_window=4, max_window_layers=3)[0] in (
      None, full3)
  assert _qwen2_windows(use_sliding_window=True, sliding_window=4)[0] in (None, full3)  # 28
  assert _qwen2_windows(use_sliding_window=True, max_window_layers=1) == (
      ("full", "sliding", "sliding"), 4096)
  assert _qwen2_windows(use_sliding_window=True, sliding_window=None,
                        max_window_layers=0)[0] in (None, full3)
  assert _qwen2_windows(use_sliding_window=False, sliding_window=4,
                        max_window_layers=0)[0] in (None, full3)
  assert _qwen2_windows(sliding_window=4, max_window_layers=0)[0] in (None, full3)
  # Given layer_types are used as they are (max_window_layers is then ignored)...
  given = ["sliding_attention", "full_attention", "sliding_attention"]
  assert _qwen2_windows(use_sliding_window=True, sliding_window=4, max_window_layers=2,
                        layer_types=given) == (("sliding", "full", "sliding"), 4)
  assert _qwen2_windows(use_sliding_window=False, sliding_window=4,
                        layer_types=["full_attention"] * 3)[0] in (None, full3)
  # ... and sliding layers without a window (use_sliding_window false) are an error, as
  # in transformers (which cannot build their cache or mask).
  with pytest.raises(hf_import.HFImportError, match="sliding_attention layers but no window"):
    _qwen2_windows(use_sliding_window=False, sliding_window=4, layer_types=given)


def test_a_step_classifier_prm_matches_its_reference(tmp_path):
  """Qwen2.5-Math-PRM's layout (a Qwen2 backbone under ``model.``, and ``score``: Linear,
  ReLU, Linear to 2 labels): our classifier head gives its label logits at every token,
  as the same torch modules do (transformers' Qwen2Model and torch.nn layers)."""
  backbone, score = write_step_classifier(
      str(tmp_path), transformers.Qwen2Config(**_COMMON, tie_word_embeddings=False), seed=20)
  model = hf_import.load(str(tmp_path), param_dtype="float32")
  assert model.config.head == "classifier" and model.config.num_labels == 2
  assert model.config.num_params() == sum(
      p.numel() for m in (backbone, score) for p in m.parameters())
  tokens, mask = _batch(np.random.RandomState(3), [10, 4, 7], 10, left=False)
  with torch.no_grad():
    hidden = backbone(input_ids=torch.from_numpy(tokens),
                      attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state
    theirs = score(hidden).numpy()
  ours = np.asarray(model(tokens, mask)[0])
  assert ours.shape == (3, 10, 2)
  assert_close(ours[mask], theirs[mask])


def test_bfloat16_checkpoint(tmp_path):
  """A bfloat16 checkpoint loads as bfloat16 parameters holding the file's values, or as
  float32 ones that match transformers on the same (upcast) weights."""
  hf = transformers.AutoModelForCausalLM.from_config(FAMILIES["llama"](),
                                                     attn_implementation="eager")
  randomize(hf, seed=7)
  hf.to(torch.bfloat16).save_pretrained(str(tmp_path))
  model = hf_import.load(str(tmp_path))
  assert model.config.param_dtype == "bfloat16" and model.config.dtype == "bfloat16"
  assert str(model.embed[...].dtype) == "bfloat16"
  want = hf.model.embed_tokens.weight.detach().float().numpy()
  np.testing.assert_array_equal(np.asarray(model.embed[...], np.float32), want)
  f32 = hf_import.load(str(tmp_path), param_dtype="float32")
  tokens, mask = _batch(np.random.RandomState(2), [6, 3], 6, left=True)
  assert_close(np.asarray(f32(tokens, mask)[0])[mask],
               _hf_logits(hf.float().eval(), tokens, mask)[mask])


def _write(directory, config: dict, tensors: dict):
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)
  safetensors.numpy.save_file(tensors, os.path.join(directory, "model.safetensors"))


def test_clear_errors(tmp_path):
  base = FAMILIES["llama"]().to_dict()
  with pytest.raises(hf_import.HFImportError, match="no config.json"):
    hf_import.load(str(tmp_path / "nothing"))
  _write(tmp_path / "phi3", {**base, "model_type": "phi3"}, {})
  with pytest.raises(hf_import.HFImportError, match=r"model_type 'phi3' is not supported"):
    hf_import.load(str(tmp_path / "phi3"))
  _write(tmp_path / "seqcls", {**base, "architectures": ["LlamaForSequenceClassification"]}, {})
  with pytest.raises(hf_import.HFImportError,
                     match=r"\['LlamaForSequenceClassification'\]: supported are \*ForCausalLM"):
    hf_import.load(str(tmp_path / "seqcls"))
  yarn = {**base, "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}
  _write(tmp_path / "yarn", yarn, {})
  with pytest.raises(hf_import.HFImportError, match=r"RoPE type 'yarn' is not supported"):
    hf_import.load(str(tmp_path / "yarn"))
  # A tensor of the wrong shape is named with both shapes, before anything is read.
  d = base["hidden_size"]
  _write(tmp_path / "shape", base, {"model.embed_tokens.weight": np.zeros((V, d + 1), np.float32)})
  with pytest.raises(hf_import.HFImportError,
                     match=rf"'model.embed_tokens.weight' has shape \({V}, {d + 1}\).*\({V}, {d}\)"):
    hf_import.load(str(tmp_path / "shape"))
  _write(tmp_path / "missing", base, {"model.embed_tokens.weight": np.zeros((V, d), np.float32)})
  with pytest.raises(hf_import.HFImportError, match=r"no tensor 'model.norm.weight'"):
    hf_import.load(str(tmp_path / "missing"))
