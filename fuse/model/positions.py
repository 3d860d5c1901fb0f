"""Positional tables and the stacks' initialisation.

Quirk FIXED_RANDOM_POSITIONS: the public code builds a sinusoidal table per stack and then, in
the stack's initialisation, passes every parameter with two or more dims through
``xavier_uniform_``, the table included: its tables are fixed random matrices, never trained.
``positional_table="sinusoidal"`` keeps the textbook table instead.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def positional_table(rows: int, dim: int, kind: str) -> nn.Parameter:
    """A (rows, dim) positional table, stored as a non-trainable parameter. ``kind="xavier"``
    leaves it for :func:`init_stack_parameters` to fill; ``"sinusoidal"`` fills it now."""
    table = sinusoidal_table(rows, dim) if kind == "sinusoidal" else torch.zeros(rows, dim)
    return nn.Parameter(table, requires_grad=False)


def sinusoidal_table(rows: int, dim: int) -> Tensor:
    """sin on even channels, cos on odd ones, wavelength 10000^(2*(j//2)/dim)."""
    pos = torch.arange(rows, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2.0 * torch.div(j, 2, rounding_mode="floor") / dim)
    return torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle)).float()


def init_stack_parameters(stack: nn.Module, positional: str) -> None:
    """xavier_uniform_ on every parameter of the stack with >= 2 dims, in registration order.

    This is the public code's initialisation (biases and LayerNorms keep PyTorch's defaults);
    walking the parameters in its order makes a model built with the same seed start from the
    same weights. Sinusoidal tables are skipped, so they keep their sinusoids.
    """
    for name, p in stack.named_parameters():
        if p.dim() < 2 or (name.endswith("_position") and positional != "xavier"):
            continue
        nn.init.xavier_uniform_(p)


def xavier_bound(rows: int, dim: int) -> float:
    """The bound of xavier_uniform_ for a (rows, dim) matrix (gain 1)."""
    return math.sqrt(6.0 / (rows + dim))
