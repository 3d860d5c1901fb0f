"""Multi-head attention, vanilla or key-sparse, in the public implementation's layout.

Self attention projects ``x + P`` with one fused ``project_qkv`` (D -> 3D, split q|k|v); cross
attention has ``project_q`` (Dq -> Dq), ``project_k`` and ``project_v`` (Dk -> Dq). Heads take
consecutive channel groups. Q is scaled by head_dim^-0.5 before Q K^T; padded keys get -inf.
Key-sparse attention then zeroes the columns of the least-attended keys (``key_sparse``).

``impl="plain"`` computes this as the public code does (softmax weights materialised, masked,
dropped out, multiplied by V) and is the reference; ``impl="fast"`` (the default) computes the
same numbers without keeping the attention maps (``fast_attention``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fast_attention
from . import key_sparse as ks
from .config import ATTENTION_IMPLS


class MultiheadAttention(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        kdim: int | None = None,
        dropout: float = 0.0,
        key_sparse: bool = False,
        keep_rate: float = 0.5,
        renormalise: bool = False,
        impl: str = "fast",
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        self.is_self = kdim is None
        # Registration order (qkv or q, k, v; then out) follows the public code, so the same
        # seed draws the same default initialisation.
        if self.is_self:
            self.project_qkv = nn.Linear(embed_dim, 3 * embed_dim)
        else:
            self.project_q = nn.Linear(embed_dim, embed_dim)
            self.project_k = nn.Linear(kdim, embed_dim)
            self.project_v = nn.Linear(kdim, embed_dim)
        self.project_out = nn.Linear(embed_dim, embed_dim)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = float(self.head_dim) ** -0.5
        self.dropout = dropout
        self.key_sparse = key_sparse
        self.keep_rate = keep_rate
        self.renormalise = renormalise
        self.impl = impl
        # None picks fast_attention's default for the device ("chunked" on CPU, "sdpa" on GPU).
        self.fast_backend: str | None = None

    def project(self, query: Tensor, key: Tensor | None, value: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Q (scaled), K, V as (B, H, L, head_dim)."""
        if self.is_self:
            q, k, v = self.project_qkv(query).chunk(3, dim=-1)
        else:
            q, k, v = self.project_q(query), self.project_k(key), self.project_v(value)
        q = q * self.scaling
        return tuple(self.split_heads(t) for t in (q, k, v))  # type: ignore[return-value]

    def split_heads(self, x: Tensor) -> Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        b, _, length, _ = x.shape
        return x.transpose(1, 2).reshape(b, length, self.embed_dim)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """query (B, T, D); key/value (B, S, Dk) for cross attention; mask (B, S) True = padded."""
        q, k, v = self.project(query, key, value)
        if self.impl == "fast":
            out = self.fast_forward(q, k, v, key_padding_mask)
        else:
            out = self.plain_forward(q, k, v, key_padding_mask)
        return self.project_out(self.merge_heads(out))

    def final_weights(self, q: Tensor, k: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """(B, H, T, S): softmax over the keys (padded keys get -inf), then the key-sparse step."""
        scores = q @ k.transpose(-2, -1)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        if self.key_sparse:
            # Quirk KS_COLUMN_SUMS_OVER_ALL_QUERIES: every query row counts, padded ones too.
            keep = ks.select_keys(weights.sum(dim=-2), self.keep_rate)
            weights = ks.sparsify(weights, keep, self.renormalise)
        return weights

    @torch.no_grad()
    def attention_map(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """The (B, H, T, S) weights this module applies (without dropout) to these inputs, whatever
        its ``impl``: for plots (see ``KSTransformer.forward(return_attention=True)``)."""
        q, k, _ = self.project(query, key, value)
        return self.final_weights(q, k, key_padding_mask)

    def plain_forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """The public code's operations: the reference the fast path is tested against."""
        weights = F.dropout(self.final_weights(q, k, key_padding_mask), p=self.dropout, training=self.training)
        return weights @ v

    def fast_forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        out, _ = fast_attention.attend(
            q,
            k,
            v,
            key_padding_mask,
            key_sparse=self.key_sparse,
            keep_rate=self.keep_rate,
            renormalise=self.renormalise,
            dropout_p=self.dropout if self.training else 0.0,
            backend=self.fast_backend,
        )
        return out
