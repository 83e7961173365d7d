"""Inferers: whole-volume inference of the detectors, sharing one per-image feature cache."""
