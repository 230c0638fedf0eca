"""The sampling core shared by every generator in ttc_jax."""

from ttc_jax.parallel import make_mesh
from ttc_jax.sampling.cached import CachedModel
from ttc_jax.sampling.cached import DecodeState
from ttc_jax.sampling.core import SampleOutput
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.sampling.core import SpecialIds
from ttc_jax.sampling.core import choose_tokens
from ttc_jax.sampling.core import process_logits
from ttc_jax.sampling.core import row_keys

__all__ = [
    "CachedModel", "DecodeState", "SampleOutput", "SamplingCore", "SamplingParams", "SpecialIds",
    "choose_tokens", "make_mesh", "process_logits", "row_keys",
]
