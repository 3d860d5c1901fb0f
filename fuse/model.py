"""The KS-Transformer: unimodal encoders, CCAB interaction both ways, deep fusion, classifier."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import quirks
from .block import Block
from .ccab import CCABStack
from .config import ModelConfig


class KSTransformer(nn.Module):
    """``forward(audio, text, audio_padding_mask, text_padding_mask) -> logits``.

    audio (B, Ta, Da) and text (B, Tt, Dt) features; masks (B, Ta) and (B, Tt) bool, True = padded
    (``None`` = no padding). ksr's caches give Ta = 460 and Tt = 20.
    """

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        n_uni, n_ccab, n_fusion = cfg.num_layers
        da, dt, fa, ft = cfg.audio_dim, cfg.text_dim, cfg.audio_ffn_dim, cfg.text_ffn_dim
        key_sparse = cfg.key_sparse != "none"
        use_audio, use_text = cfg.modalities in ("both", "audio"), cfg.modalities in ("both", "text")
        # Construction order follows the public code (same seed, same initial weights).
        self.audio_encoder = Block(n_uni, da, fa, cfg) if use_audio else None
        self.text_encoder = Block(n_uni, dt, ft, cfg) if use_text else None
        if cfg.modalities == "both":
            self.audio_ccabs = CCABStack(n_ccab, da, dt, fa, cfg)  # audio attends to text
            self.text_ccabs = CCABStack(n_ccab, dt, da, ft, cfg)  # text attends to audio
        else:
            self.audio_ccabs = self.text_ccabs = None
        self.audio_fusion = Block(n_fusion, da, fa, cfg, key_sparse=key_sparse) if use_audio else None
        self.text_fusion = Block(n_fusion, dt, ft, cfg, key_sparse=key_sparse) if use_text else None
        width = da * use_audio + dt * use_text
        self.classifier = nn.Sequential(
            nn.Linear(width, width // 2),
            nn.ReLU(),
            nn.Dropout(cfg.classifier_dropout),
            nn.Linear(width // 2, width // 4),
            nn.ReLU(),
            nn.Dropout(cfg.classifier_dropout),
            nn.Linear(width // 4, cfg.num_classes),
        )

    def check_inputs(self, audio: Tensor, text: Tensor, audio_mask: Tensor | None, text_mask: Tensor | None) -> None:
        cfg = self.cfg
        for name, x, dim in (("audio", audio, cfg.audio_dim), ("text", text, cfg.text_dim)):
            if x.dim() != 3 or x.shape[-1] != dim:
                raise ValueError(f"{name} features must be (batch, length, {dim}), got {tuple(x.shape)}")
            if x.shape[1] > cfg.max_positions:
                raise ValueError(f"{name} length {x.shape[1]} exceeds the positional tables ({cfg.max_positions})")
        if audio.shape[0] != text.shape[0]:
            raise ValueError(f"audio batch {audio.shape[0]} != text batch {text.shape[0]}")
        for name, mask, x in (("audio_padding_mask", audio_mask, audio), ("text_padding_mask", text_mask, text)):
            if mask is None:
                continue
            if mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:2]):
                raise ValueError(
                    f"{name} must be bool of shape {tuple(x.shape[:2])} (True = padded), "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )

    def forward(
        self,
        audio: Tensor | None,
        text: Tensor | None,
        audio_padding_mask: Tensor | None = None,
        text_padding_mask: Tensor | None = None,
    ) -> Tensor:
        if self.cfg.modalities != "both":
            return self.forward_unimodal(audio, text, audio_padding_mask, text_padding_mask)
        self.check_inputs(audio, text, audio_padding_mask, text_padding_mask)
        cfg = self.cfg
        a = self.audio_encoder(audio, key_padding_mask=audio_padding_mask)
        t = self.text_encoder(text, key_padding_mask=text_padding_mask)
        # Both directions read the unimodal outputs; neither sees the other's interaction output.
        a_int = self.audio_ccabs(a, t, text_padding_mask, audio_padding_mask)
        t_int = self.text_ccabs(t, a, audio_padding_mask, text_padding_mask)
        a = quirks.merge_interaction(a, a_int, cfg)
        t = quirks.merge_interaction(t, t_int, cfg)
        a = self.audio_fusion(a, key_padding_mask=quirks.fusion_mask(audio_padding_mask, cfg))
        t = self.text_fusion(t, key_padding_mask=quirks.fusion_mask(text_padding_mask, cfg))
        pooled = torch.cat(
            (quirks.pool(a, audio_padding_mask, cfg), quirks.pool(t, text_padding_mask, cfg)), dim=-1
        )
        return self.classifier(pooled)

    def forward_unimodal(self, audio, text, audio_padding_mask, text_padding_mask) -> Tensor:
        """Audio-only or text-only: encoder, deep-fusion block, pooling, classifier."""
        cfg = self.cfg
        if cfg.modalities == "audio":
            x, mask, encoder, fusion, dim, name = audio, audio_padding_mask, self.audio_encoder, self.audio_fusion, cfg.audio_dim, "audio"
        else:
            x, mask, encoder, fusion, dim, name = text, text_padding_mask, self.text_encoder, self.text_fusion, cfg.text_dim, "text"
        if x is None or x.dim() != 3 or x.shape[-1] != dim:
            shape = None if x is None else tuple(x.shape)
            raise ValueError(f"this {name}-only model needs {name} features (batch, length, {dim}), got {shape}")
        x = encoder(x, key_padding_mask=mask)
        x = fusion(x, key_padding_mask=quirks.fusion_mask(mask, cfg))
        return self.classifier(quirks.pool(x, mask, cfg))


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Tensor elements in the state dict, and trainable ones (positional tables are not)."""
    return {
        "total": sum(p.numel() for p in model.state_dict().values()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "entries": len(model.state_dict()),
    }
