"""Stage 2: the KS-Transformer fusion model, its training and its reports.

Reads features only through ``ksr.cache``; never imports ``ksr.extract`` or an encoder library.
Three wings, each importing only the ones before it:

- ``model``: what one forward pass computes (the KS-Transformer, its config, the baselines).
- ``train``: recipes, folds, run folders, the training loop, checkpoints, metrics.
- ``report``: evaluation, reports, statistics, comparisons, TensorBoard, ONNX export.

What users import is here: ``load_model``, ``KSTransformer``, ``ModelConfig``, ``convert_official``, ...
"""

from ..common.lazy import lazy_names

# Imported on first use (common/lazy.py): `ksr --help` must not pay for torch.
__getattr__ = lazy_names(
    __name__,
    {
        "ModelConfig": "model.config",
        "KSTransformer": "model.model",
        "count_parameters": "model.model",
        "CheckpointError": "train.checkpoint",
        "load_checkpoint": "train.checkpoint",
        "load_model": "train.checkpoint",
        "save_checkpoint": "train.checkpoint",
        "convert_official": "train.official",
        "model_from_official_state": "train.official",
        "to_official_state_dict": "train.official",
    },
)

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
