"""Benchmarks (``make bench``): run from the repository root as ``python -m benchmarks.run``."""
