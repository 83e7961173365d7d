"""What runs a bundle workflow: volume I/O, inferers, trainers, evaluators, reports, and the helpers configs call."""
