"""The one definition of a cache row and its padding mask.

A row holds an utterance's features cut to the cache's max length (460 audio frames, 20 text
tokens), cast to the storage dtype, and zero-padded; the reader hands rows back as float32 with
a mask that is True at padded positions. The writer, the reader and ``ksr predict`` (which must
feed the model exactly what a cached utterance would give) all go through these functions.
"""

from __future__ import annotations

import numpy as np
import torch

from .convert import all_finite, copy_unthreaded

STORAGE_DTYPES = ("float16", "float32")
FLOAT16_MAX = 65504.0


def row_problem(x: torch.Tensor | np.ndarray, max_len: int, what: str, dtype: str) -> str | None:
    """Why features cannot be stored in a row (the writer would refuse them), checked on the rows
    that are kept; None when they can."""
    x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[0] == 0:
        return f"the {what} encoder returned features of shape {tuple(x.shape)}"
    kept = x[:max_len]
    if not torch.isfinite(kept).all():
        return f"{what} features hold NaN or inf"
    if dtype == "float16" and kept.abs().max().item() > FLOAT16_MAX:
        return f"{what} features overflow float16 (|x| > 65504); use --dtype float32"
    return None


def fill_row(row: np.ndarray, x: np.ndarray) -> int:
    """Copy ``x`` (length, D) into the preallocated ``row`` (max_len, D) of the storage dtype: cut
    at max_len, rounded to the row's dtype, zeros after. Returns the kept length. Raises ValueError
    for NaN or inf, and for values the storage dtype cannot hold."""
    n = min(len(x), len(row))
    if not all_finite(x[:n]):
        raise ValueError("features hold NaN or inf")
    copy_unthreaded(torch.from_numpy(row[:n]), torch.from_numpy(np.ascontiguousarray(x[:n])))
    row[n:] = 0
    if not all_finite(row[:n]):
        raise ValueError(f"features overflow {row.dtype} (|x| > {FLOAT16_MAX:.0f})")
    return n


def stored_row(x: torch.Tensor, max_len: int, dtype: str) -> tuple[torch.Tensor, int]:
    """``(max_len, D)`` float32: the row the reader returns for an utterance stored from ``x``,
    and its kept length."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
    x = x.detach().float().cpu().numpy()
    row = np.zeros((max_len, x.shape[1]), dtype)
    n = fill_row(row, x)
    return torch.from_numpy(row).float(), n


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, max_len) bool, True at the padded positions of rows with these true ``lengths`` (B,)."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]
