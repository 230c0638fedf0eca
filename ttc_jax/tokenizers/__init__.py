"""Tokenizers behind one protocol (:class:`Tokenizer`): sentencepiece trained on the task
(``spm``) and imported Hugging Face checkpoints' (``hf``)."""

from ttc_jax.tokenizers.base import Tokenizer

__all__ = ["Tokenizer"]
