"""Config sections shared by the experiment configs (experiments/*.py)."""
