"""The model a ModelConfig describes: the KS-Transformer or one of its baselines."""

from __future__ import annotations

from torch import nn

from .baselines import HeadBaseline, PoolingProbe
from .config import ModelConfig
from .model import KSTransformer

_BUILDERS = {"ks-transformer": KSTransformer, "head": HeadBaseline, "probe": PoolingProbe}


def build_model(cfg: ModelConfig) -> nn.Module:
    """A fresh model (random weights from torch's generator) of ``cfg.architecture``."""
    return _BUILDERS[cfg.architecture](cfg)
