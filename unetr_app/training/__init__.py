"""Training: the checkpoint format, the training loop and its records."""
