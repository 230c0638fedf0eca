"""Hugging Face checkpoints into the one decoder: a local directory of config.json and
safetensors (one file, or shards with ``model.safetensors.index.json``).

Families (``model_type``): ``llama`` (Llama 2 / 3.x, with Llama 3's RoPE scaling),
``mistral`` (Llama's layout; a sliding window on every layer when the config sets one),
``qwen2`` (Qwen2 / Qwen2.5: q/k/v biases, tied or untied embeddings, a sliding window on
the layers from ``max_window_layers`` on when ``use_sliding_window``), ``gemma`` and
``gemma2`` (embeddings scaled by sqrt(d_model), RMSNorm by 1 + w, GeGLU; Gemma 2's
norms after each sublayer, logit soft caps, query_pre_attn_scalar and sliding-window
layers). Each maps onto :class:`~ttc_jax.models.transformer.TransformerConfig`'s fields;
nothing is forked per family.

Loading never materialises the model twice: the model is built abstractly
(``nnx.eval_shape``: no random init), and each parameter is one
``jax.make_array_from_callback`` with its target sharding, whose callback reads only
that device's slice of the checkpoint tensors (safetensors' lazy ``get_slice`` over a
memory map), transposed on the fly (transformers stores ``(out, in)``). On a mesh
(``load(mesh=...)``, laid out by :mod:`ttc_jax.models.sharding`) each device reads its
own shard of a 'model'-split parameter; a replicated one is read once per device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import NamedSharding

from ttc_jax.models import sharding
from ttc_jax.models.transformer import RopeScaling
from ttc_jax.models.transformer import Transformer
from ttc_jax.models.transformer import TransformerConfig
from ttc_jax.parallel import MODEL_AXIS

FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gemma2")
# Architectures (config.json "architectures") whose head is not the LM head: the step
# classifier of Qwen2.5-Math-PRM (``score``: Linear(d, d), ReLU, Linear(d, num_labels)).
CLASSIFIER_ARCHITECTURES = ("Qwen2ForProcessRewardModel",)
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16",
           "torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
# Checkpoint tensors that hold nothing a parameter needs (buffers some exports include).
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


class HFImportError(ValueError):
  """A checkpoint directory this importer cannot read: the message names what and why."""


def read_config(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise HFImportError(f"{directory} has no config.json: expected a Hugging Face checkpoint "
                        "directory (config.json + *.safetensors).")
  with open(path) as f:
    return json.load(f)


def _rope(hf: dict[str, Any]) -> tuple[float, RopeScaling | None]:
  """(rope_theta, scaling) from transformers 5's rope_parameters or the older rope_scaling."""
  params = dict(hf.get("rope_parameters") or {})
  if "full_attention" in params:  # per layer type (Gemma 3): not supported here
    raise HFImportError("per-layer-type RoPE parameters (Gemma 3) are not supported.")
  legacy = hf.get("rope_scaling") or {}
  params = {**legacy, **params}
  theta = float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))
  kind = params.get("rope_type", params.get("type", "default"))
  if kind in (None, "default"):
    return theta, None
  if kind == "linear":
    return theta, RopeScaling(kind="linear", factor=float(params["factor"]))
  if kind == "llama3":
    return theta, RopeScaling(
        kind="llama3", factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position=int(params["original_max_position_embeddings"]))
  raise HFImportError(f"RoPE type {kind!r} is not supported (supported: default, linear, llama3).")


def _dtype(name: str | None, what: str) -> str:
  if name not in _DTYPES:
    raise HFImportError(f"{what}={name!r}: expected one of {sorted(set(_DTYPES.values()))}.")
  return _DTYPES[name]


def config_from_hf(hf: dict[str, Any], *, max_seq_len: int | None = None,
                   param_dtype: str | None = None, dtype: str | None = None
                   ) -> TransformerConfig:
  """The :class:`TransformerConfig` of a transformers config dict (config.json).

  max_seq_len: the context to serve (default: the checkpoint's max_position_embeddings).
  param_dtype: default the checkpoint's own dtype; dtype (activations): default param_dtype.
  """
  family = hf.get("model_type")
  if family not in FAMILIES:
    raise HFImportError(f"model_type {family!r} is not supported; supported: {FAMILIES}.")
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag) and family == "llama":
      raise HFImportError(f"{flag}=True (biases on every projection) is not supported.")
  heads = int(hf["num_attention_heads"])
  theta, scaling = _rope(hf)
  stored = hf.get("dtype", hf.get("torch_dtype")) or "float32"
  pdt = _dtype(param_dtype or stored, "param_dtype")
  act_name = hf.get("hidden_activation") or hf.get("hidden_act") or "silu"
  if act_name not in _ACTIVATIONS:
    raise HFImportError(f"activation {act_name!r} is not supported; supported: "
                        f"{sorted(_ACTIVATIONS)}.")
  architectures = tuple(hf.get("architectures") or ())
  head = {}
  if any(a in CLASSIFIER_ARCHITECTURES for a in architectures):
    labels = hf.get("num_labels") or len(hf.get("id2label") or {}) or 2
    head = dict(head="classifier", num_labels=int(labels), tie_embeddings=False)
  elif any(not a.endswith("ForCausalLM") for a in architectures):
    raise HFImportError(f"architectures {list(architectures)}: supported are *ForCausalLM and "
                        f"{list(CLASSIFIER_ARCHITECTURES)}.")
  fields = dict(
      vocab_size=int(hf["vocab_size"]),
      d_model=int(hf["hidden_size"]),
      num_layers=int(hf["num_hidden_layers"]),
      num_heads=heads,
      num_kv_heads=int(hf.get("num_key_value_heads") or heads),
      head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
      mlp_dim=int(hf["intermediate_size"]),
      max_seq_len=int(max_seq_len or hf.get("max_position_embeddings") or 2048),
      rope_theta=theta,
      rope_scaling=scaling,
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", family.startswith("gemma"))),
      activation=_ACTIVATIONS[act_name],
      param_dtype=pdt,
      dtype=_dtype(dtype, "dtype") if dtype else pdt,
  )
  fields.update(head)
  if family == "mistral" and hf.get("sliding_window"):
    fields.update(_layer_types(hf, default="sliding"))
  if family == "qwen2":
    fields["qkv_bias"] = True
    fields.update(_qwen2_layer_types(hf))
  if family.startswith("gemma"):
    fields.update(norm_offset=1.0, embed_scale=True)
  if family == "gemma2":
    fields.update(post_norms=True,
                  query_scale=float(hf.get("query_pre_attn_scalar") or fields["head_dim"]) ** -0.5,
                  attn_softcap=hf.get("attn_logit_softcapping"),
                  final_softcap=hf.get("final_logit_softcapping"))
    fields.update(_layer_types(hf, default="alternate"))
  return TransformerConfig(**fields)


def _layer_types(hf: dict[str, Any], default: str) -> dict[str, Any]:
  n = int(hf["num_hidden_layers"])
  window = hf.get("sliding_window")
  types = hf.get("layer_types")
  if types is None:
    types = (["sliding_attention"] * n if default == "sliding" else
             ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)])
  names = {"sliding_attention": "sliding", "full_attention": "full"}
  unknown = sorted(set(types) - set(names))
  if unknown:
    raise HFImportError(f"layer types {unknown} are not supported; supported: {sorted(names)}.")
  out = tuple(names[t] for t in types)
  if "sliding" in out and not window:
    return {"layer_types": None}  # no window given: every layer attends to everything
  return {"layer_types": out, "sliding_window": int(window) if window else None}


def _qwen2_layer_types(hf: dict[str, Any]) -> dict[str, Any]:
  """Which Qwen2 layers slide, by transformers' rule (5.x: configuration_qwen2.py,
  ``Qwen2Config.__post_init__``; modeling_qwen2.py, ``Qwen2Attention.__init__``):

  * the window is ``sliding_window`` if ``use_sliding_window`` else None (keys absent from
    config.json take Qwen2Config's defaults: ``use_sliding_window=False``,
    ``sliding_window=4096``, ``max_window_layers=28``);
  * without ``layer_types``, layer i slides iff the window is not None and
    ``i >= max_window_layers`` (the first max_window_layers layers attend to everything);
  * given ``layer_types`` are used as they are, a 'sliding_attention' layer taking the
    window; with no window transformers cannot build their mask or cache (it raises), so
    neither do we.
  """
  window = hf.get("sliding_window", 4096) if hf.get("use_sliding_window", False) else None
  types = hf.get("layer_types")
  if types is None:
    if window is None:
      return {}
    first = hf.get("max_window_layers", 28)
    first = 28 if first is None else int(first)
    types = ["sliding_attention" if i >= first else "full_attention"
             for i in range(int(hf["num_hidden_layers"]))]
  elif "sliding_attention" in types and window is None:
    raise HFImportError(
        f"layer_types {list(types)} name sliding_attention layers but no window is set "
        f"(use_sliding_window={hf.get('use_sliding_window', False)}, "
        f"sliding_window={hf.get('sliding_window', 4096)}): transformers cannot run this "
        "checkpoint either.")
  out = _layer_types({**hf, "sliding_window": window, "layer_types": list(types)},
                     default="sliding")  # checks the names
  return out if "sliding" in out["layer_types"] else {}  # every layer full: the default


@dataclasses.dataclass(frozen=True)
class Source:
  """A parameter as a checkpoint tensor; 2-D weights are transposed from transformers'
  (out, in) layout."""

  name: str
  transpose: bool = True


def tensor_sources(config: TransformerConfig) -> dict[tuple, Source]:
  """Each parameter path of the decoder (as in ``nnx.to_pure_dict``) -> its checkpoint tensors."""
  out: dict[tuple, Source] = {
      ("embed",): Source("model.embed_tokens.weight", transpose=False),
      ("final_norm", "scale"): Source("model.norm.weight", transpose=False),
  }
  if config.head == "classifier":
    out[("score_hidden",)] = Source("score.0.weight")
    out[("score_hidden_bias",)] = Source("score.0.bias", transpose=False)
    out[("score_out",)] = Source("score.2.weight")
    out[("score_out_bias",)] = Source("score.2.bias", transpose=False)
  elif config.head != "lm":
    raise HFImportError(f"head={config.head!r}: checkpoints hold LM or classifier heads.")
  elif not config.tie_embeddings:
    out[("lm_head",)] = Source("lm_head.weight")
  vec = lambda name: Source(name, transpose=False)
  for i in range(config.num_layers):
    pre = f"model.layers.{i}."
    attn = pre + "self_attn."
    for p in "qkv":
      out[("layers", i, "attn", p)] = Source(attn + f"{p}_proj.weight")
      if config.qkv_bias:
        out[("layers", i, "attn", f"{p}_bias")] = vec(attn + f"{p}_proj.bias")
    out[("layers", i, "attn", "out")] = Source(attn + "o_proj.weight")
    out[("layers", i, "mlp", "gate")] = Source(pre + "mlp.gate_proj.weight")
    out[("layers", i, "mlp", "up")] = Source(pre + "mlp.up_proj.weight")
    out[("layers", i, "mlp", "down")] = Source(pre + "mlp.down_proj.weight")
    out[("layers", i, "attn_norm", "scale")] = vec(pre + "input_layernorm.weight")
    if config.post_norms:  # Gemma 2's names
      out[("layers", i, "attn_post_norm", "scale")] = vec(pre + "post_attention_layernorm.weight")
      out[("layers", i, "mlp_norm", "scale")] = vec(pre + "pre_feedforward_layernorm.weight")
      out[("layers", i, "mlp_post_norm", "scale")] = vec(pre + "post_feedforward_layernorm.weight")
    else:
      out[("layers", i, "mlp_norm", "scale")] = vec(pre + "post_attention_layernorm.weight")
  return out


class _Tensors:
  """Lazy, sliceable access to the tensors of a checkpoint directory's safetensors files."""

  def __init__(self, directory: str, stack: contextlib.ExitStack):
    import safetensors  # pylint: disable=g-import-not-at-top

    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    else:
      files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
      if len(files) != 1:
        raise HFImportError(
            f"{directory}: expected model.safetensors.index.json or exactly one .safetensors "
            f"file; found {files or 'none'}.")
      weight_map = None
      single = files[0]
    handles = {}

    def handle(name: str):
      file = single if weight_map is None else weight_map.get(name)
      if file is None:
        raise HFImportError(f"{directory}: tensor {name!r} is not in the checkpoint index.")
      if file not in handles:
        path = os.path.join(directory, file)
        if not os.path.isfile(path):
          raise HFImportError(f"{directory}: {file} (listed in the index) is missing.")
        handles[file] = stack.enter_context(safetensors.safe_open(path, framework="numpy"))
      return handles[file]

    self._handle = handle
    # Every tensor name: the index lists them; a single file is opened to list its own.
    self.names = set(weight_map) if weight_map is not None else set(handle("").keys())

  def shape(self, name: str) -> tuple[int, ...]:
    if name not in self.names:
      raise HFImportError(f"the checkpoint has no tensor {name!r}.")
    return tuple(self._handle(name).get_slice(name).get_shape())

  def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
    return self._handle(name).get_slice(name)[index]


def _bounds(index, shape) -> list[tuple[int, int]]:
  out = []
  for sl, n in zip(index, shape):
    start, stop, step = sl.indices(n)
    if step != 1:
      raise ValueError(f"strided shard index {index}")
    out.append((start, stop))
  return out


def _reader(tensors: _Tensors, src: Source, shape: tuple[int, ...], dtype
            ) -> Callable[[tuple[slice, ...]], np.ndarray]:
  """A make_array_from_callback callback: the slice ``index`` of the parameter."""
  stored = tensors.shape(src.name)
  want = shape[::-1] if src.transpose else shape
  if stored != want:
    raise HFImportError(f"tensor {src.name!r} has shape {stored}; the model expects {want}.")

  def read(index) -> np.ndarray:
    sl = tuple(slice(a, b) for a, b in _bounds(index, shape))
    x = tensors.read(src.name, sl[::-1] if src.transpose else sl)
    return np.asarray(x.T if src.transpose else x, dtype)

  return read


def load(directory: str, *, max_seq_len: int | None = None, param_dtype: str | None = None,
         dtype: str | None = None, mesh: Mesh | None = None) -> Transformer:
  """The checkpoint in ``directory`` as a :class:`Transformer` (its LM head, or the step
  classifier of a Qwen2.5-Math-PRM-style process reward model).

  mesh: each parameter is laid out on it as :mod:`ttc_jax.models.sharding` says (split
    over 'model', replicated over 'data'), each device reading its own shard from disk;
    default: the process's first device (as trained models load).
  Raises HFImportError (unsupported family or option, missing or misshapen tensors)
  before any parameter is read.
  """
  config = config_from_hf(read_config(directory), max_seq_len=max_seq_len,
                          param_dtype=param_dtype, dtype=dtype)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
  pure = nnx.to_pure_dict(abstract)
  sources = tensor_sources(config)
  flat = {sharding.param_path(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(pure)}
  missing = sorted(set(flat) - set(sources))
  if missing:  # a parameter without a mapping: a bug of this module, not of the checkpoint
    raise AssertionError(f"no checkpoint source for parameters {missing}")
  if mesh is None:
    place = lambda path: jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  else:
    sharding.check(config, mesh.shape[MODEL_AXIS])
    place = lambda path: NamedSharding(
        mesh, sharding.param_spec(path, config, mesh.shape[MODEL_AXIS]))
  with contextlib.ExitStack() as stack:
    tensors = _Tensors(directory, stack)
    readers = {path: _reader(tensors, sources[path], leaf.shape, leaf.dtype)
               for path, leaf in flat.items()}  # every shape checked before any read
    used = {s.name for s in sources.values()}
    unused = sorted(n for n in tensors.names - used
                    if not _IGNORED.match(n) and not (n == "lm_head.weight"
                                                      and config.tie_embeddings))
    if unused:
      logging.warning("%s: %d checkpoint tensors are not used by the decoder: %s%s", directory,
                      len(unused), unused[:5], " ..." if len(unused) > 5 else "")
    arrays = {}
    for path, leaf in flat.items():
      arrays[path] = jax.make_array_from_callback(leaf.shape, place(path), readers[path])

  nnx.replace_by_pure_dict(
      abstract, jax.tree_util.tree_map_with_path(lambda path, _: arrays[sharding.param_path(path)], pure))
  return nnx.merge(graphdef, abstract)
