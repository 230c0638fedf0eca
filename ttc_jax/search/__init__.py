"""Search strategies over the sampling core and the PRM: best-of-N, beam, lookahead,
DVTS, particle filtering."""

from ttc_jax.search.beam import BeamSearch
from ttc_jax.search.beam import DVTS
from ttc_jax.search.beam import ParticleFilter
from ttc_jax.search.beam import default_width
from ttc_jax.search.best_of_n import BestOfN
from ttc_jax.search.common import Candidate
from ttc_jax.search.common import SearchContext
from ttc_jax.search.common import SearchResult
from ttc_jax.search.common import Strategy
from ttc_jax.search.common import search_problems

__all__ = ["BeamSearch", "BestOfN", "DVTS", "ParticleFilter", "Candidate", "SearchContext", "SearchResult", "Strategy",
           "default_width", "search_problems"]
