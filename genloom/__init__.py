"""genloom: one readable PyTorch toolkit for generative AI, from data to serving.

    import genloom
    result = genloom.train("shakespeare-char", out="runs/shakes", max_time=60)
    model = genloom.load("runs/shakes")            # the handle of the checkpoint's content type
    print(model.generate("ROMEO:", max_new_tokens=100, seed=0)[0])

The handle classes (genloom.TextModel, genloom.ImageModel, ...) are named by each content package's
registration (its Modality record) and imported when first used.
"""

from .api import evaluate, finetune, load, merge, train
from .core import registry
from .core.config import RunConfig, load_recipe
from .core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    GenloomError,
    TrainingError,
)
from .handle import EvalRequest, Handle

__version__ = "0.1.0"

_HANDLES = {reference.rpartition(":")[2]: reference for record in registry.modalities() for reference in record.handles}

__all__ = ["load", "train", "finetune", "merge", "evaluate", "load_recipe", "RunConfig", "Handle", "EvalRequest",
           *_HANDLES, "GenloomError", "ConfigError", "DataError", "CheckpointError", "TrainingError", "__version__"]


def __getattr__(name: str):
    if name in _HANDLES:
        value = registry.resolve(_HANDLES[name])
        globals()[name] = value
        return value
    raise AttributeError(f"module 'genloom' has no attribute {name!r}")
