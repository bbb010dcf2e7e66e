"""Experiments: submit, read, cancel, curves and checkpoints."""
