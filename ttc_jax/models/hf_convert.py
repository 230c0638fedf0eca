"""Weight exchange with transformers' LlamaForCausalLM (PyTorch).

Used by the parity test and the sampling benchmark (the same weights in both
frameworks). torch and transformers are optional: imported on call.
"""

from __future__ import annotations

import numpy as np

from ttc_jax.models.transformer import Transformer


def hf_llama_config(model: Transformer, *, eos_token_id=None, pad_token_id=None,
                    bos_token_id=None):
  """The transformers LlamaConfig equivalent to ``model.config``."""
  import transformers  # pylint: disable=g-import-not-at-top

  cfg = model.config
  if cfg.head != "lm":
    raise ValueError(f"only LM-head models map to LlamaForCausalLM; got head={cfg.head!r}.")
  return transformers.LlamaConfig(
      vocab_size=cfg.vocab_size,
      hidden_size=cfg.d_model,
      intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.kv_heads,
      head_dim=cfg.dim_per_head,
      max_position_embeddings=cfg.max_seq_len,
      rms_norm_eps=cfg.norm_eps,
      rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
      tie_word_embeddings=cfg.tie_embeddings,
      attention_bias=False,
      mlp_bias=False,
      eos_token_id=eos_token_id,
      pad_token_id=pad_token_id,
      bos_token_id=bos_token_id,
  )


def llama_state_dict(model: Transformer) -> dict[str, np.ndarray]:
  """transformers-layout (out_features, in_features) float32 arrays of ``model``."""
  cfg = model.config
  f = lambda p: np.asarray(p[...], np.float32)
  sd = {"model.embed_tokens.weight": f(model.embed),
        "model.norm.weight": f(model.final_norm.scale)}
  if not cfg.tie_embeddings:
    sd["lm_head.weight"] = f(model.lm_head).T
  for i, blk in enumerate(model.layers):
    pre = f"model.layers.{i}."
    sd.update({
        pre + "self_attn.q_proj.weight": f(blk.attn.q).T,
        pre + "self_attn.k_proj.weight": f(blk.attn.k).T,
        pre + "self_attn.v_proj.weight": f(blk.attn.v).T,
        pre + "self_attn.o_proj.weight": f(blk.attn.out).T,
        pre + "mlp.gate_proj.weight": f(blk.mlp.gate).T,
        pre + "mlp.up_proj.weight": f(blk.mlp.up).T,
        pre + "mlp.down_proj.weight": f(blk.mlp.down).T,
        pre + "input_layernorm.weight": f(blk.attn_norm.scale),
        pre + "post_attention_layernorm.weight": f(blk.mlp_norm.scale),
    })
  return sd


def to_hf_llama(model: Transformer, **config_kwargs):
  """A transformers LlamaForCausalLM (float32, eval mode) with ``model``'s weights."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  hf = transformers.LlamaForCausalLM(hf_llama_config(model, **config_kwargs))
  hf = hf.to(torch.float32).eval()
  sd = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in llama_state_dict(model).items()}
  missing, unexpected = hf.load_state_dict(sd, strict=False)
  missing = [m for m in missing if not (m == "lm_head.weight" and model.config.tie_embeddings)]
  if missing or unexpected:
    raise RuntimeError(f"weight mapping mismatch: missing={missing}, unexpected={unexpected}")
  return hf
