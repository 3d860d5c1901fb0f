"""Key-sparse attention's one rule (paper, Sec. 2.2), used by every attention path.

Each key is scored by the attention it receives (the softmax weights summed over the queries);
the ``int(S * keep_rate)`` best keys stay and the weights of the others are set to zero. Written
as the paper's figure draws it::

    keep = select_keys(weights.sum(dim=-2), keep_rate)
    weights = sparsify(weights, keep, renormalise)

The plain path does exactly that. The fast paths never hold ``weights`` whole: they compute the
same ``keep`` slice by slice and apply it through :func:`value_scale` (zeroing the columns of W
before ``W @ V`` equals zeroing the rows of V) or, when renormalising, by masking the dropped
keys like padding.
"""

from __future__ import annotations

import torch
from torch import Tensor


def keep_count(num_keys: int, keep_rate: float) -> int:
    """``int(S * keep_rate)`` with S the full key length, padding included."""
    n = int(num_keys * keep_rate)
    if n < 1:
        raise ValueError(
            f"key-sparse attention keeps int({num_keys} keys * keep_rate {keep_rate}) = 0 keys; "
            "raise keep_rate or use longer sequences"
        )
    return n


def select_keys(column_sums: Tensor, keep_rate: float) -> Tensor:
    """Which keys survive: bool (..., S) from the attention each key receives, (..., S).

    Quirk KS_COLUMN_SUMS_OVER_ALL_QUERIES: the callers sum over ALL query rows, padded ones too.
    Quirk KS_TIES_KEEP_MORE: the threshold is the n-th largest score; a key is dropped only when
    strictly below it, so ties at the threshold keep more than n keys.
    """
    n = keep_count(column_sums.shape[-1], keep_rate)
    threshold = column_sums.topk(n, dim=-1, largest=True, sorted=True).values[..., n - 1 : n]
    return ~(column_sums < threshold)


def sparsify(weights: Tensor, keep: Tensor, renormalise: bool) -> Tensor:
    """Zero the columns of dropped keys in the (..., T, S) softmax weights.

    Quirk KS_NO_RENORMALISATION: the public code leaves each row summing to less than 1;
    ``ks_renormalise`` divides each row by its new sum instead.
    """
    weights = weights * keep.unsqueeze(-2).to(weights.dtype)
    if renormalise:
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    return weights


def value_scale(keep: Tensor | None, renormalise: bool, dropout_p: float, dtype: torch.dtype) -> Tensor | float:
    """What V's rows are multiplied by on the fast paths: ``keep`` (the same zeros as
    :func:`sparsify` without renormalisation) and dropout's 1 / (1 - p). keep (c, S) -> (c, S, 1).
    Renormalised weights are a softmax over the kept keys, applied as a mask instead."""
    scale = 1.0 / (1.0 - dropout_p)
    if keep is None or renormalise:
        return scale
    return keep.to(dtype).unsqueeze(-1) * scale
