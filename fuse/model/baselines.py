"""The baselines every KS-Transformer result stands beside, on the same folds and reports.

- ``head``: the SUPERB / EmoBox downstream head: per modality a linear projection, ReLU and mean
  pooling over the true frames, then one linear classifier over the pooled vectors. Trained by
  the same loop, recipe and epoch selection as the KS-Transformer.
- ``probe``: mean and standard deviation of each modality's true frames / tokens, standardised
  with the training fold's statistics, into a multinomial logistic regression fitted by
  scikit-learn; its regularisation C is chosen on the validation set, as an epoch would be.

Both are torch modules with the KS-Transformer's ``forward(audio, text, audio_padding_mask,
text_padding_mask)``, so checkpoints, ``ksr eval``, reports and ``ksr predict`` treat them alike.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import ModelConfig


def used_inputs(cfg: ModelConfig, audio, text, audio_padding_mask, text_padding_mask) -> list[tuple[Tensor, Tensor]]:
    """[(features, padding mask)] of the modalities the model reads, audio first."""
    out = []
    for name, x, mask, dim in (
        ("audio", audio, audio_padding_mask, cfg.audio_dim),
        ("text", text, text_padding_mask, cfg.text_dim),
    ):
        if cfg.modalities not in ("both", name):
            continue
        if x is None or x.dim() != 3 or x.shape[-1] != dim:
            raise ValueError(
                f"this model needs {name} features (batch, length, {dim}), got {None if x is None else tuple(x.shape)}"
            )
        if mask is None:
            mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        out.append((x, mask))
    return out


def masked_mean_std(x: Tensor, padding_mask: Tensor) -> tuple[Tensor, Tensor]:
    """(B, D) mean and (population) standard deviation over each row's true positions."""
    keep = (~padding_mask).to(x.dtype).unsqueeze(-1)
    n = keep.sum(dim=1).clamp_min(1.0)
    mean = (x * keep).sum(dim=1) / n
    var = (((x - mean.unsqueeze(1)) * keep) ** 2).sum(dim=1) / n
    return mean, var.sqrt()


class HeadBaseline(nn.Module):
    """Linear -> ReLU -> masked mean pooling per modality, then one linear layer to the classes."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.projections = nn.ModuleDict()
        if cfg.modalities in ("both", "audio"):
            self.projections["audio"] = nn.Linear(cfg.audio_dim, cfg.head_dim)
        if cfg.modalities in ("both", "text"):
            self.projections["text"] = nn.Linear(cfg.text_dim, cfg.head_dim)
        self.classifier = nn.Linear(cfg.head_dim * len(self.projections), cfg.num_classes)

    def forward(self, audio, text, audio_padding_mask=None, text_padding_mask=None) -> Tensor:
        pooled = []
        for projection, (x, mask) in zip(
            self.projections.values(),
            used_inputs(self.cfg, audio, text, audio_padding_mask, text_padding_mask),
            strict=True,
        ):
            pooled.append(masked_mean_std(torch.relu(projection(x)), mask)[0])
        return self.classifier(torch.cat(pooled, dim=-1))


class PoolingProbe(nn.Module):
    """Logistic regression on standardised [mean, std] of each used modality's true positions.

    The standardisation (``mean``, ``scale``) and the linear layer are set from a scikit-learn fit
    (``ksr.fuse.train.probe.fit_probe``); the module itself only applies them.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width = 2 * (
            (cfg.audio_dim if cfg.modalities != "text" else 0) + (cfg.text_dim if cfg.modalities != "audio" else 0)
        )
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))
        self.linear = nn.Linear(width, cfg.num_classes)

    def pooled(self, audio, text, audio_padding_mask=None, text_padding_mask=None) -> Tensor:
        """(B, width): [mean, std] of each used modality, audio first."""
        parts = []
        for x, mask in used_inputs(self.cfg, audio, text, audio_padding_mask, text_padding_mask):
            parts.extend(masked_mean_std(x.float(), mask))
        return torch.cat(parts, dim=-1)

    def forward(self, audio, text, audio_padding_mask=None, text_padding_mask=None) -> Tensor:
        z = (self.pooled(audio, text, audio_padding_mask, text_padding_mask) - self.mean) / self.scale
        return self.linear(z.to(self.linear.weight.dtype))
