"""Attention blocks, one per module, each usable on its own in any MONAI network."""
