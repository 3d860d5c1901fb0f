"""The public implementation's quirks, each in one named place.

ksr's default model computes what the public KS-Transformer implementation computes, including
the places where that computation differs from what its paper or a textbook Transformer would
suggest. Each such place is a function here whose docstring names the quirk, says what the public
code does, and names the ``ModelConfig`` option (if any) that departs from it. Tests in
``tests/test_quirks.py`` pin every one, so none can be "fixed" silently.

Quirks and where they act:

- FIXED_RANDOM_POSITIONS (``positional_table``, ``init_block_parameters``): the per-block
  positional tables are xavier-uniform random matrices, never trained.
- POSITIONS_IN_EVERY_LAYER (``add_positions``): the table is re-added to the attention input of
  every layer; the residual path and the cross-attention values never see it.
- KS_COLUMN_SUMS_OVER_ALL_QUERIES, KS_TIES_KEEP_MORE (``key_sparse_keep``): the key scores sum
  the softmax weights over every query row (padded ones too), the number kept is
  ``int(S * keep_rate)`` over the full key length, and every key tied with the threshold stays.
- KS_NO_RENORMALISATION (``apply_key_sparse``): rows are not renormalised after the mask.
- MASKS_ONLY_WHERE_USED (``interaction_self_mask``, ``fusion_mask``): the CCAB self layer and
  the deep-fusion layers attend over padding.
- DOUBLE_CCAB_RESIDUAL (``ccab_stack_residual``, ``merge_interaction``): the CCAB stack adds its
  input back, and the model adds the unimodal output once more.
- POOLING_OVER_PADDING (``pool``): the mean runs over all 460 / 20 positions.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import ModelConfig


# --- FIXED_RANDOM_POSITIONS -------------------------------------------------------------------
def positional_table(rows: int, dim: int, kind: str) -> nn.Parameter:
    """A (rows, dim) positional table, stored as a non-trainable parameter.

    The public code builds a sinusoidal table and then, in the block's initialisation, passes
    every parameter with two or more dims through ``xavier_uniform_``, the table included: its
    tables are fixed random matrices. ``kind="xavier"`` (default) leaves the table for
    ``init_block_parameters`` to fill the same way; ``kind="sinusoidal"`` keeps the textbook table.
    """
    if kind == "sinusoidal":
        table = sinusoidal_table(rows, dim)
    else:
        table = torch.zeros(rows, dim)  # filled by init_block_parameters
    return nn.Parameter(table, requires_grad=False)


def sinusoidal_table(rows: int, dim: int) -> Tensor:
    """sin on even channels, cos on odd ones, wavelength 10000^(2*(j//2)/dim)."""
    pos = torch.arange(rows, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2.0 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


def init_block_parameters(block: nn.Module, cfg: ModelConfig) -> None:
    """xavier_uniform_ on every parameter of the block with >= 2 dims, in registration order.

    This is the public code's block initialisation (biases and LayerNorms keep PyTorch's
    defaults). Walking the parameters in the same order as the public code makes a model built
    with the same seed start from the same weights. With ``positional_table="sinusoidal"`` the
    tables are skipped, so they keep their sinusoids.
    """
    for name, p in block.named_parameters():
        if p.dim() < 2:
            continue
        if name.endswith("_position") and cfg.positional_table != "xavier":
            continue
        nn.init.xavier_uniform_(p)


def xavier_bound(rows: int, dim: int) -> float:
    """The bound of xavier_uniform_ for a (rows, dim) matrix (gain 1)."""
    return math.sqrt(6.0 / (rows + dim))


# --- POSITIONS_IN_EVERY_LAYER -----------------------------------------------------------------
def add_positions(x: Tensor, table: Tensor | None) -> Tensor:
    """Attention input of a layer: ``x + table[:T]``, padded positions included.

    Called in EVERY layer of a block on the layer's current input; the residual path keeps the
    un-positioned ``x``, and in cross layers the value is the key LayerNorm output without table.
    """
    if table is None:
        return x
    return x + table[: x.shape[1]]


# --- KS_COLUMN_SUMS_OVER_ALL_QUERIES, KS_TIES_KEEP_MORE ---------------------------------------
def keep_count(num_keys: int, keep_rate: float) -> int:
    """``int(S * keep_rate)`` with S the full key length, padding included."""
    n = int(num_keys * keep_rate)
    if n < 1:
        raise ValueError(
            f"key-sparse attention keeps int({num_keys} keys * keep_rate {keep_rate}) = 0 keys; "
            "raise keep_rate or use longer sequences"
        )
    return n


def key_sparse_keep(column_sums: Tensor, keep_rate: float) -> Tensor:
    """Which keys survive: bool (..., S) from the attention each key receives, (..., S).

    ``column_sums`` are the softmax weights summed over ALL query rows, padded queries included.
    The threshold is the n-th largest score with ``n = int(S * keep_rate)``; a key is dropped only
    when its score is strictly below the threshold, so ties at the threshold keep more than n keys.
    """
    n = keep_count(column_sums.shape[-1], keep_rate)
    threshold = column_sums.topk(n, dim=-1, largest=True, sorted=True).values[..., n - 1 : n]
    return ~(column_sums < threshold)


# --- KS_NO_RENORMALISATION --------------------------------------------------------------------
def apply_key_sparse(weights: Tensor, keep: Tensor, renormalise: bool) -> Tensor:
    """Zero the columns of dropped keys in the (…, T, S) softmax weights.

    The public code does not renormalise: each row then sums to less than 1. ``ks_renormalise``
    divides each row by its new sum instead.
    """
    weights = weights * keep.unsqueeze(-2).to(weights.dtype)
    if renormalise:
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    return weights


# --- MASKS_ONLY_WHERE_USED --------------------------------------------------------------------
def interaction_self_mask(own_mask: Tensor | None, cfg: ModelConfig) -> Tensor | None:
    """The CCAB self layer gets no padding mask (its cross layer gets the other modality's)."""
    return own_mask if cfg.mask_interaction_self else None


def fusion_mask(own_mask: Tensor | None, cfg: ModelConfig) -> Tensor | None:
    """Deep-fusion layers get no padding mask."""
    return own_mask if cfg.mask_fusion else None


# --- DOUBLE_CCAB_RESIDUAL ---------------------------------------------------------------------
def ccab_stack_residual(stack_output: Tensor, stack_input: Tensor) -> Tensor:
    """The CCAB stack returns ``stack(x) + x`` (with 0 CCABs: ``2x``)."""
    return stack_output + stack_input


def merge_interaction(unimodal: Tensor, interaction: Tensor, cfg: ModelConfig) -> Tensor:
    """The model adds the unimodal output once more: ``x + (stack(x) + x)``.

    With ``ccab_residual="single"`` the interaction output (already ``stack(x) + x``) is used as is.
    """
    if cfg.ccab_residual == "double":
        return unimodal + interaction
    return interaction


# --- POOLING_OVER_PADDING ---------------------------------------------------------------------
def pool(x: Tensor, padding_mask: Tensor | None, cfg: ModelConfig) -> Tensor:
    """(B, T, D) -> (B, D): the public code averages over all T positions, padding included.

    ``pooling="masked"`` averages over the true positions only.
    """
    if cfg.pooling == "all_positions" or padding_mask is None:
        return x.mean(dim=1)
    keep = (~padding_mask).to(x.dtype).unsqueeze(-1)
    return (x * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)
