"""Per-dimension standardisation of the input features (``input_norm="standardize"``).

Frozen encoders give features whose dimensions differ in scale by orders of magnitude; the
public code feeds them as they are (its stacks' LayerNorms normalise each frame across its
dimensions, not each dimension across frames). With this option the model stores the mean and
standard deviation of every dimension over the true frames of its training utterances, and
standardises its inputs with them; padded positions stay zero.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


class InputStandardizer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        z = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return z if padding_mask is None else z.masked_fill(padding_mask.unsqueeze(-1), 0.0)


def standardizers(model: nn.Module) -> dict[str, InputStandardizer]:
    """{"audio": ..., "text": ...}: the model's standardizers (none without the option)."""
    return {
        name: getattr(model, f"{name}_input_norm")
        for name in ("audio", "text")
        if isinstance(getattr(model, f"{name}_input_norm", None), InputStandardizer)
    }


@torch.no_grad()
def fit_standardizers(model: nn.Module, cache, indices: np.ndarray, batch_size: int = 256) -> None:
    """Set the model's standardizers from the true frames of the cache utterances ``indices``
    (float64 sums, so the statistics do not depend on the batch size)."""
    found = standardizers(model)
    if not found:
        return
    sums: dict[str, list] = {name: [0.0, 0.0, 0.0] for name in found}  # count, sum, sum of squares
    for batch in cache.loader(indices, batch_size=batch_size):
        for name in found:
            x = (batch.audio if name == "audio" else batch.text).double()
            keep = ~(batch.audio_padding_mask if name == "audio" else batch.text_padding_mask)
            rows = x[keep]
            sums[name][0] += rows.shape[0]
            sums[name][1] = sums[name][1] + rows.sum(dim=0)
            sums[name][2] = sums[name][2] + (rows**2).sum(dim=0)
    for name, (n, s, ss) in sums.items():
        mean = s / max(n, 1)
        std = (ss / max(n, 1) - mean**2).clamp_min(0).sqrt()
        std[std < 1e-8] = 1.0  # a constant dimension is left as it is
        found[name].mean.copy_(mean)
        found[name].std.copy_(std)
