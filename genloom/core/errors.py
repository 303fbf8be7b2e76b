"""Errors that describe a user's mistake. The CLI prints their message without a traceback."""

from __future__ import annotations

__all__ = ["GenloomError", "ConfigError", "DataError", "CheckpointError", "TrainingError"]


class GenloomError(Exception):
    """A problem the user can fix: the message names the file, key or value and what was expected."""


class ConfigError(GenloomError):
    """A recipe, a `--set` override or a saved config is invalid."""


class DataError(GenloomError):
    """A data source is missing, empty or unreadable."""


class CheckpointError(GenloomError):
    """A checkpoint directory is missing files or holds weights that do not fit the model."""


class TrainingError(GenloomError):
    """Training cannot go on (for example the loss became NaN); the last good checkpoint is kept."""
