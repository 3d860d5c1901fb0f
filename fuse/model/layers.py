"""The Transformer layer and the stack of layers every part of the model is made of.

A stack normalises its query sequence (and, for cross attention, its key sequence) once, owns a
positional table per input, and runs N post-LN encoder layers. The unimodal encoders are
vanilla self-attention stacks; CCAB layers and deep-fusion layers are key-sparse stacks.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiheadAttention
from .config import ModelConfig
from .positions import init_stack_parameters, positional_table


class EncoderLayer(nn.Module):
    """Post-LN layer: ``h = LN(x + drop(attn(x + P)))``, ``out = LN(h + drop(fc2(drop(relu(fc1(h))))))``."""

    def __init__(self, embed_dim: int, ffn_dim: int, kdim: int | None, key_sparse: bool, cfg: ModelConfig) -> None:
        super().__init__()
        self.attention = MultiheadAttention(
            embed_dim,
            cfg.num_heads,
            kdim=kdim,
            dropout=cfg.attention_dropout,
            key_sparse=key_sparse,
            keep_rate=cfg.keep_rate,
            renormalise=cfg.ks_renormalise,
            impl=cfg.attention_impl,
        )
        self.attention_layer_norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.final_layer_norm = nn.LayerNorm(embed_dim)
        self.dropout = cfg.dropout

    def forward(
        self,
        x: Tensor,
        key: Tensor | None,
        value: Tensor | None,
        query_position: Tensor,
        key_position: Tensor | None,
        key_padding_mask: Tensor | None,
    ) -> Tensor:
        # Quirk POSITIONS_IN_EVERY_LAYER: every layer adds the table to its attention input (padded
        # positions too); the residual path and the cross-attention values never see it.
        query = x + query_position[: x.shape[1]]
        if key is not None:
            key = key + key_position[: key.shape[1]]
        attended = self.attention(query, key, value, key_padding_mask)
        x = self.attention_layer_norm(x + F.dropout(attended, self.dropout, self.training))
        hidden = F.dropout(F.relu(self.fc1(x)), self.dropout, self.training)
        return self.final_layer_norm(x + F.dropout(self.fc2(hidden), self.dropout, self.training))


class LayerStack(nn.Module):
    """Input LayerNorm(s), positional table(s), then ``num_layers`` encoder layers.

    ``kdim=None`` makes a self-attention stack; otherwise a cross-attention stack whose keys and
    values come from a sequence of width ``kdim``.
    """

    def __init__(
        self,
        num_layers: int,
        embed_dim: int,
        ffn_dim: int,
        cfg: ModelConfig,
        kdim: int | None = None,
        key_sparse: bool = False,
    ) -> None:
        super().__init__()
        # Registration order mirrors the public code (see init_stack_parameters).
        self.query_position = positional_table(cfg.max_positions, embed_dim, cfg.positional_table)
        self.query_input_norm = nn.LayerNorm(embed_dim)
        if kdim is not None:
            self.key_position = positional_table(cfg.max_positions, kdim, cfg.positional_table)
            self.key_input_norm = nn.LayerNorm(kdim)
        else:
            self.key_position = None
            self.key_input_norm = None
        self.layers = nn.ModuleList(EncoderLayer(embed_dim, ffn_dim, kdim, key_sparse, cfg) for _ in range(num_layers))
        init_stack_parameters(self, cfg.positional_table)

    @property
    def is_cross(self) -> bool:
        return self.key_input_norm is not None

    def forward(self, query: Tensor, key: Tensor | None = None, key_padding_mask: Tensor | None = None) -> Tensor:
        """query (B, T, D); key (B, S, Dk) for cross stacks; mask over the keys, True = padded."""
        x = self.query_input_norm(query)
        value = None
        if self.is_cross:
            if key is None:
                raise ValueError("a cross-attention stack needs a key sequence")
            key = value = self.key_input_norm(key)
        for layer in self.layers:
            x = layer(x, key, value, self.query_position, self.key_position, key_padding_mask)
        return x
