"""Measured speed and memory of the three bundles; ``python -m benchmarks`` runs them all into one table."""
