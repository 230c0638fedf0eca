"""Verifiers: Monte-Carlo step labels, PRM / ORM scoring, step and answer aggregation, and
adapters for the public PRMs' formats (adapters.py)."""
