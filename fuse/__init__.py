"""Stage 2: the KS-Transformer fusion model, its training and its reports.

Reads features only through ``ksr.cache``; never imports ``ksr.extract`` or an encoder library.
Three wings, each importing only the ones before it:

- ``model``: what one forward pass computes (the KS-Transformer, its config, the baselines).
- ``train``: recipes, folds, run folders, the training loop, checkpoints, metrics.
- ``report``: evaluation, reports, statistics, comparisons, TensorBoard, ONNX export.

What users import is here: ``load_model``, ``KSTransformer``, ``ModelConfig``, ``convert_official``, ...
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
