"""genloom: one readable PyTorch toolkit for generative AI, from data to serving."""

from .api import GANModel, ImageModel, TextToImageModel, finetune, load, merge, train
from .code.handle import CodeModel
from .core.config import RunConfig, load_recipe
from .core.errors import (
           CheckpointError,
           ConfigError,
           DataError,
           GenloomError,
           TrainingError,
)
from .music.handle import MusicModel
from .text.handle import TextModel
from .video.handle import VideoModel

__version__ = "0.1.0"
__all__ = ["load", "train", "finetune", "merge", "load_recipe", "RunConfig", "TextModel", "CodeModel", "MusicModel", "VideoModel", "ImageModel",
           "TextToImageModel", "GANModel", "GenloomError", "ConfigError", "DataError", "CheckpointError", "TrainingError",
           "__version__"]
