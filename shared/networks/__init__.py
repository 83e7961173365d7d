"""Attention blocks and full models of the three bundles."""
