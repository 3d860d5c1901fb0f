"""Stage 2: the KS-Transformer fusion model (and, later, its training and evaluation).

Reads features only through ``ksr.cache``; never imports ``ksr.extract`` or an encoder library.
"""

from .model.config import ModelConfig
from .model.model import KSTransformer, count_parameters
from .train.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .train.official import convert_official, model_from_official_state, to_official_state_dict

__all__ = [
    "CheckpointError",
    "KSTransformer",
    "ModelConfig",
    "convert_official",
    "count_parameters",
    "load_checkpoint",
    "load_model",
    "model_from_official_state",
    "save_checkpoint",
    "to_official_state_dict",
]
