"""Array helpers shared by the writer and the reader.

Copies here run on the calling thread only. Torch's intra-op threads meet at a spinning barrier
after every op: on a small machine shared with other work, per-row multi-threaded copies are
several times slower than the same copies cut into pieces that torch runs inline (an
element-wise op of fewer than ``_GRAIN`` elements, torch's internal GRAIN_SIZE). Splitting a
batch's rows over two plain threads did not pay either (bench/results.md): the copy is bound by memory
bandwidth, which a second thread on that machine does not add.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Sequence

import numpy as np
import torch

_GRAIN = 32768
_foreach_copy = getattr(torch, "_foreach_copy_", None)


def copy_unthreaded(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)``, converting the dtype, in pieces torch runs on the calling thread."""
    for a, b in zip(dst.view(-1).split(_GRAIN), src.reshape(-1).split(_GRAIN), strict=True):
        a.copy_(b)


def pieces_per_row(numel: int) -> int:
    """The fewest equal pieces, each at most ``_GRAIN`` elements, that a row of ``numel`` splits
    into (a row of 460 x 512 gives 8 pieces of 29,440); 1 (the whole row) if that takes more
    than 4x the minimum number of pieces, which no T x D feature row needs in practice."""
    low = max(1, math.ceil(numel / _GRAIN))
    return next((k for k in range(low, 4 * low + 1) if numel % k == 0), 1)


def row_pieces(rows: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Row ``i`` of ``rows`` (N, ...) as its ``k`` equal pieces ``[i * k, (i + 1) * k)``."""
    return list(rows.reshape(len(rows) * k, math.prod(rows.shape[1:]) // k).unbind(0))


def gather_pieces(
    dst: torch.Tensor, src: Sequence[torch.Tensor], starts: Sequence[int], valid: Sequence[int], k: int
) -> None:
    """``dst[j]`` = the row made of pieces ``src[starts[j]:starts[j] + k]``, converting the dtype.

    Only its first ``valid[j]`` pieces (those holding frames before the padding) are read;
    the others are zeroed, which costs half as much as converting stored zeros. The whole batch
    is one call into torch (per piece it would be ~300 Python calls).
    """
    out = row_pieces(dst, k)
    copy_to, copy_from, zero = [], [], []
    for j, (start, v) in enumerate(zip(starts, valid, strict=True)):
        copy_to += out[j * k : j * k + v]
        copy_from += src[start : start + v]
        zero += out[j * k + v : (j + 1) * k]
    if _foreach_copy is not None:
        if copy_to:
            _foreach_copy(copy_to, copy_from)
        if zero:
            torch._foreach_zero_(zero)
    else:  # pragma: no cover - torch without _foreach_copy_
        for a, b in zip(copy_to, copy_from, strict=True):
            a.copy_(b)
        for a in zero:
            a.zero_()


def valid_pieces(lengths: np.ndarray, width: int, dim: int, k: int) -> np.ndarray:
    """How many of a row's ``k`` pieces hold any of its first ``lengths`` frames of ``dim``
    values (a row being ``width`` frames)."""
    piece = width * dim // k
    return -(-np.asarray(lengths, dtype=np.int64) * dim // piece)


def all_finite(a: np.ndarray) -> bool:
    """No NaN or inf in ``a``. float16 is tested on its exponent bits: numpy has no vectorised
    float16 ``isfinite`` (far slower than float32's)."""
    if a.dtype == np.float16:
        return not ((a.view(np.uint16) & 0x7C00) == 0x7C00).any()
    if a.dtype.kind in "fc":
        return bool(np.isfinite(a).all())
    return True


class BufferPool:
    """Fresh-looking output tensors whose memory is reused once the consumer lets go of them.

    A batch is ~30 MB; allocated anew each time, glibc hands such blocks back to the system and
    faults them in again page by page, which can take half of a pass's time. Here each tensor wraps a numpy array view; when the last tensor or view
    using that memory dies, numpy's view object dies with it and its block returns to the pool,
    so memory is never reused while anything can still read it.
    """

    def __init__(self, keep: int = 8, pinned: bool = False):
        self.keep = keep  # free blocks kept per (shape, dtype); more are handed back
        # Page-locked blocks (for batches copied to a CUDA device without a staging copy);
        # only where CUDA is there to lock them.
        self.pinned = pinned
        self._free: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        np_dtype = _NUMPY_DTYPE.get(dtype)
        if np_dtype is None:  # no numpy twin (bfloat16): a plain allocation
            return torch.empty(shape, dtype=dtype)
        key = (tuple(shape), dtype)
        with self._lock:
            free = self._free.get(key)
            block = free.pop() if free else None
        if block is None:
            if self.pinned and torch.cuda.is_available():  # the numpy view keeps the pinned tensor alive
                block = torch.empty(shape, dtype=dtype, pin_memory=True).numpy()
            else:
                block = np.empty(shape, np_dtype)
        view = block.view()  # the object the tensor keeps alive, and the one we watch
        weakref.finalize(view, self._release, key, block)
        return torch.from_numpy(view)

    def _release(self, key: tuple, block: np.ndarray) -> None:
        with self._lock:
            free = self._free.setdefault(key, [])
            if len(free) < self.keep:
                free.append(block)


_NUMPY_DTYPE = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}
