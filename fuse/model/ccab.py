"""Cascaded Cross-Attention Blocks: modality A attends to modality B, then to itself."""

from __future__ import annotations

from torch import Tensor, nn

from .config import ModelConfig
from .layers import LayerStack


class CCAB(nn.Module):
    """A key-sparse cross layer (queries from A, keys/values from B) then a key-sparse self layer."""

    def __init__(self, embed_dim: int, kdim: int, ffn_dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        key_sparse = cfg.key_sparse != "none"
        self.cross_block = LayerStack(1, embed_dim, ffn_dim, cfg, kdim=kdim, key_sparse=key_sparse)
        self.self_block = LayerStack(1, embed_dim, ffn_dim, cfg, key_sparse=key_sparse)
        self.mask_self = cfg.mask_interaction_self

    def forward(
        self, x: Tensor, other: Tensor, other_padding_mask: Tensor | None, own_padding_mask: Tensor | None
    ) -> Tensor:
        x = self.cross_block(x, other, key_padding_mask=other_padding_mask)
        # Quirk MASKS_ONLY_WHERE_USED: the self layer attends over padding (mask_interaction_self masks it).
        return self.self_block(x, key_padding_mask=own_padding_mask if self.mask_self else None)


class CCABStack(nn.Module):
    """``num_blocks`` CCABs in sequence, every one attending to the same ``other`` sequence."""

    def __init__(self, num_blocks: int, embed_dim: int, kdim: int, ffn_dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(CCAB(embed_dim, kdim, ffn_dim, cfg) for _ in range(num_blocks))

    def forward(
        self, x: Tensor, other: Tensor, other_padding_mask: Tensor | None, own_padding_mask: Tensor | None = None
    ) -> Tensor:
        out = x
        for block in self.blocks:
            out = block(out, other, other_padding_mask, own_padding_mask)
        # Quirk DOUBLE_CCAB_RESIDUAL (first half): the stack adds its input back (0 CCABs give 2x).
        return out + x
