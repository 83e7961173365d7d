"""Ignite trainers/evaluators for detection models, slice-wise volume inferers and ensembles."""
