"""The pipeline: stages over self-describing artifacts (see ``pipeline.stages``).

Only this package knows the workdir's layout; nothing in ttc_jax imports it.
"""

from ttc_jax.pipeline.runner import Pipeline
from ttc_jax.pipeline.stages import STAGES
from ttc_jax.pipeline.stages import Stage

__all__ = ["Pipeline", "STAGES", "Stage"]
