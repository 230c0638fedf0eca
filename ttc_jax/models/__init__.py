"""Models: one Llama-style NNX decoder with an LM or a value head."""

from ttc_jax.models.transformer import KVCache
from ttc_jax.models.transformer import Transformer
from ttc_jax.models.transformer import TransformerConfig

__all__ = ["KVCache", "Transformer", "TransformerConfig"]
