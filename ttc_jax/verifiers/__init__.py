"""Verifiers: Monte-Carlo step labels, PRM / ORM scoring, step and answer aggregation."""
