"""ttc_jax: compute-optimal test-time compute for LLMs (Snell et al. 2024) in JAX/Flax NNX."""

__version__ = "0.1.0"
