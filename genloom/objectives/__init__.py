"""Losses for a batch: one per family, used by the one training loop."""
