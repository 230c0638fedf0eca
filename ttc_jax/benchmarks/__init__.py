"""Benchmarks (throughput measurements, not tests)."""
