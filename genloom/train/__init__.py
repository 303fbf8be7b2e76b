"""The training loop, checkpoints, metrics and the process runtime."""
