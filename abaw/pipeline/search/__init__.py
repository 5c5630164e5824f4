"""`abaw search`: sample configs from a search space, train each, keep a leaderboard."""

from abaw.pipeline.search.runner import SearchSettings, run_search
from abaw.pipeline.search.space import SearchSpace, load_space

__all__ = ["SearchSettings", "SearchSpace", "load_space", "run_search"]
