"""genloom: one readable PyTorch toolkit for generative AI, from data to serving."""

from .api import GANModel, ImageModel, TextModel, TextToImageModel, finetune, load, merge, train
from .api_code import CodeModel
from .api_music import MusicModel
from .api_video import VideoModel
from .config import RunConfig, load_recipe
from .errors import CheckpointError, ConfigError, DataError, GenloomError, TrainingError

__version__ = "0.1.0"
__all__ = ["load", "train", "finetune", "merge", "load_recipe", "RunConfig", "TextModel", "CodeModel", "MusicModel", "VideoModel", "ImageModel",
           "TextToImageModel", "GANModel", "GenloomError", "ConfigError", "DataError", "CheckpointError", "TrainingError",
           "__version__"]
