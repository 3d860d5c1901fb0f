"""The KS-Transformer: unimodal stacks, CCAB interaction both ways, deep fusion, classifier.

The attribute names (``audio_encoder``, ``audio_ccabs``, ``audio_fusion``, ...) are the
checkpoint keys and stay; ``audio_encoder`` is the model's own unimodal Transformer stack over
the cached features, not an extraction encoder.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .ccab import CCABStack
from .config import ModelConfig
from .layers import LayerStack
from .normalise import InputStandardizer
from .tasks import attribute_head, join_outputs


def pool(x: Tensor, padding_mask: Tensor | None, masked: bool) -> Tensor:
    """(B, T, D) -> (B, D). Quirk POOLING_OVER_PADDING: the public code averages over all T
    positions, padding included; ``pooling="masked"`` averages over the true positions only."""
    if not masked or padding_mask is None:
        return x.mean(dim=1)
    keep = (~padding_mask).to(x.dtype).unsqueeze(-1)
    return (x * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)


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
        self.audio_encoder = LayerStack(n_uni, da, fa, cfg) if use_audio else None
        self.text_encoder = LayerStack(n_uni, dt, ft, cfg) if use_text else None
        if cfg.modalities == "both":
            self.audio_ccabs = CCABStack(n_ccab, da, dt, fa, cfg)  # audio attends to text
            self.text_ccabs = CCABStack(n_ccab, dt, da, ft, cfg)  # text attends to audio
        else:
            self.audio_ccabs = self.text_ccabs = None
        self.audio_fusion = LayerStack(n_fusion, da, fa, cfg, key_sparse=key_sparse) if use_audio else None
        self.text_fusion = LayerStack(n_fusion, dt, ft, cfg, key_sparse=key_sparse) if use_text else None
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
        # Buffers only (no random draws): the same seed still gives the public code's weights.
        standardize = cfg.input_norm == "standardize"
        self.audio_input_norm = InputStandardizer(da) if standardize and use_audio else None
        self.text_input_norm = InputStandardizer(dt) if standardize and use_text else None
        # Task attributes/both only (fuse/model/tasks.py); built last: task classes is unchanged.
        self.attribute_head = attribute_head(width, cfg)

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
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, list[Tensor]]]:
        """Logits (B, num_classes); under task attributes/both followed by the attribute values
        (``tasks.split_outputs`` splits them). With ``return_attention``: ``(logits, maps)``, where
        ``maps["text_to_audio"][i]`` (B, H, Tt, Ta) holds the weights with which the words attend to
        the frames in the cross layer of CCAB ``i + 1``, after the key-sparse step and without
        dropout, and ``maps["audio_to_text"][i]`` (B, H, Ta, Tt) the other direction."""
        if not return_attention:
            return self._logits(audio, text, audio_padding_mask, text_padding_mask)
        with self._recording_cross_attention() as maps:
            logits = self._logits(audio, text, audio_padding_mask, text_padding_mask)
        return logits, maps

    def _logits(self, audio, text, audio_padding_mask, text_padding_mask) -> Tensor:
        cfg = self.cfg
        if cfg.modalities != "both":
            return self.forward_unimodal(audio, text, audio_padding_mask, text_padding_mask)
        self.check_inputs(audio, text, audio_padding_mask, text_padding_mask)
        audio = self._standardized(audio, audio_padding_mask, self.audio_input_norm)
        text = self._standardized(text, text_padding_mask, self.text_input_norm)
        a = self.audio_encoder(audio, key_padding_mask=audio_padding_mask)
        t = self.text_encoder(text, key_padding_mask=text_padding_mask)
        # Both directions read the unimodal outputs; neither sees the other's interaction output.
        a_int = self.audio_ccabs(a, t, text_padding_mask, audio_padding_mask)
        t_int = self.text_ccabs(t, a, audio_padding_mask, text_padding_mask)
        # Quirk DOUBLE_CCAB_RESIDUAL (second half): the unimodal output is added once more,
        # x + (stack(x) + x); ccab_residual="single" uses the stack's output as it is.
        if cfg.ccab_residual == "double":
            a_int, t_int = a + a_int, t + t_int
        # Quirk MASKS_ONLY_WHERE_USED: deep fusion attends over padding unless mask_fusion is set.
        a = self.audio_fusion(a_int, key_padding_mask=audio_padding_mask if cfg.mask_fusion else None)
        t = self.text_fusion(t_int, key_padding_mask=text_padding_mask if cfg.mask_fusion else None)
        masked = cfg.pooling == "masked"
        pooled = torch.cat((pool(a, audio_padding_mask, masked), pool(t, text_padding_mask, masked)), dim=-1)
        return join_outputs(self.classifier(pooled), self.attribute_head, pooled)

    def forward_unimodal(self, audio, text, audio_padding_mask, text_padding_mask) -> Tensor:
        """Audio-only or text-only: unimodal stack, deep-fusion stack, pooling, classifier."""
        cfg = self.cfg
        if cfg.modalities == "audio":
            x, mask, unimodal, fusion, dim, name = (
                audio,
                audio_padding_mask,
                self.audio_encoder,
                self.audio_fusion,
                cfg.audio_dim,
                "audio",
            )
        else:
            x, mask, unimodal, fusion, dim, name = (
                text,
                text_padding_mask,
                self.text_encoder,
                self.text_fusion,
                cfg.text_dim,
                "text",
            )
        if x is None or x.dim() != 3 or x.shape[-1] != dim:
            shape = None if x is None else tuple(x.shape)
            raise ValueError(f"this {name}-only model needs {name} features (batch, length, {dim}), got {shape}")
        x = self._standardized(x, mask, self.audio_input_norm if name == "audio" else self.text_input_norm)
        x = unimodal(x, key_padding_mask=mask)
        x = fusion(x, key_padding_mask=mask if cfg.mask_fusion else None)
        pooled = pool(x, mask, cfg.pooling == "masked")
        return join_outputs(self.classifier(pooled), self.attribute_head, pooled)

    @staticmethod
    def _standardized(x: Tensor, mask: Tensor | None, standardizer: InputStandardizer | None) -> Tensor:
        """The features as the stacks read them (``input_norm``; the public code: unchanged)."""
        return x if standardizer is None else standardizer(x, mask)

    @contextmanager
    def _recording_cross_attention(self):
        """Forward hooks on every CCAB's cross attention that store its weights, removed after."""
        maps: dict[str, list[Tensor]] = {"text_to_audio": [], "audio_to_text": []}
        if self.cfg.modalities != "both":
            yield maps
            return
        handles = []
        for name, stack in (("text_to_audio", self.text_ccabs), ("audio_to_text", self.audio_ccabs)):
            for ccab in stack.blocks:
                attention = ccab.cross_block.layers[-1].attention
                handles.append(
                    attention.register_forward_hook(
                        lambda module, args, _out, store=maps[name]: store.append(module.attention_map(*args))
                    )
                )
        try:
            yield maps
        finally:
            for handle in handles:
                handle.remove()


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Tensor elements in the state dict, and trainable ones (positional tables are not)."""
    return {
        "total": sum(p.numel() for p in model.state_dict().values()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "entries": len(model.state_dict()),
    }
