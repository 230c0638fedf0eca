"""Training: optax loop with orbax checkpoints, token datasets, and the study's parts."""
