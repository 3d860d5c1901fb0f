"""Fast vanilla and key-sparse attention: the plain path's numbers without its attention maps.

The plain path (``MultiheadAttention`` with ``impl="plain"``) does what the public code does:
it materialises the (B, H, T, S) softmax weights, multiplies them by the key mask, applies
dropout and multiplies by V, and autograd keeps about three such maps per layer for the
backward pass. Two facts make that unnecessary:

1. Zeroing key columns of the weights before ``W @ V`` equals zeroing the matching ROWS of V:
   ``(W * keep) @ V == W @ (keep[:, None] * V)``, gradients included (``keep`` is piecewise
   constant). With renormalisation the weights equal a softmax over the kept keys only, so the
   dropped keys can simply be masked like padding.
2. ``keep`` only needs the column sums of the softmax, which carry no gradient.

Two routes use these facts (``backend``):

- ``"chunked"`` (CPU default): one autograd Function that walks the batch x head slices in
  chunks of about one 460 x 460 map, small enough for one core's cache. It computes scores,
  softmax, column sums, keep mask, dropout and ``W @ V`` chunk by chunk, stores no (T x S)
  float map (only the bool dropout survivors) and recomputes the softmax in the backward pass.
  The chunks of a large call are spread over ``torch.get_num_threads()`` worker threads that
  run their ops single-threaded, rather than every small op being split over the cores; small
  calls run in the calling thread (``POOL_MIN_ELEMENTS``). On CPU this removes
  most of the plain path's cost, which is less arithmetic than fresh multi-hundred-MB
  allocations (page faults), torch's serial Bernoulli sampler and a dozen passes over each map;
  see ``bench/results.md``.
- ``"sdpa"`` (GPU default): column sums in chunks under no_grad, then
  ``torch.nn.functional.scaled_dot_product_attention`` on the key-masked V, so the fused GPU
  kernels (memory-efficient / flash) do the heavy product and the dropout. On CPU, SDPA with
  dropout falls back to its unfused math kernel, and without dropout (eval) its flash kernel gains
  little on vanilla layers and loses on key-sparse ones, which need the extra column-sum pass
  (bench/results.md). So CPU uses the chunked route throughout.
  ``ks_renormalise`` works on both routes (see fact 1); nothing falls back to the plain path.

Keep mask: both routes compute the column sums with the same kernels as the plain path (bmm on
the same memory layouts, -inf on padded keys, ``softmax``, ``sum`` over queries) on slices of
the batch x head dimension. Each slice is computed by the same per-row / per-column arithmetic
as in the full tensor, so the sums, and hence the keys kept, are bitwise those of the plain path
(``tests/fuse/test_fast_attention.py`` checks this at 460 x 460), and ties built on purpose stay
ties. The rule itself is ``ks.select_keys``
(``fuse/model/key_sparse.py``).

Dropout: the plain path draws an element-wise Bernoulli mask over (B, H, T, S) on the masked
weights and scales by 1 / (1 - p). ``W_masked * M / (1-p) @ V == (W * M) @ (keep * V / (1-p))``
for the same M, so masking V (and folding in the scale) keeps the same distribution. The chunked
route draws M with ``DropoutSampler``: one uniform 32-bit word per element, P(drop) = p within
2**-33 (torch's own ``bernoulli_`` on float weights compares 24-bit uniforms), seeded from torch's
default generator. SDPA's own ``dropout_p`` is the same Bernoulli on the softmax weights before
the product with V.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import key_sparse as ks

BACKENDS = ("chunked", "sdpa")
# Elements of one (chunk, T, S) block on CPU: one 460 x 460 map, under 1 MiB of float32, so
# the few buffers a chunk needs stay in one core's 2 MiB L2 cache and are reused by the
# allocator instead of being faulted in afresh.
CPU_CHUNK_ELEMENTS = 1 << 18
# On GPU the chunks only bound the no_grad column-sum pass's memory.
GPU_CHUNK_ELEMENTS = 1 << 26


def default_backend(device: torch.device) -> str:
    return "chunked" if device.type == "cpu" else "sdpa"


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None,
    *,
    key_sparse: bool,
    keep_rate: float,
    renormalise: bool,
    dropout_p: float,
    backend: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Attention output (B, H, T, hd) and the kept keys (B, H, S) bool (None when vanilla).

    q (already scaled by head_dim**-0.5), k, v: (B, H, L, hd); mask (B, S), True = padded.
    ``dropout_p`` is the rate to apply now (0 in eval mode).
    """
    backend = backend or default_backend(q.device)
    if backend == "chunked":
        return chunked_attention(q, k, v, key_padding_mask, key_sparse, keep_rate, renormalise, dropout_p)
    if backend == "sdpa":
        return sdpa_attention(q, k, v, key_padding_mask, key_sparse, keep_rate, renormalise, dropout_p)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")


# --- shared pieces -----------------------------------------------------------------------------
def flatten_heads(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """(B, H, L, d) -> q (N, T, d) and k^T (N, d, S), contiguous, N = B*H.

    These are the layouts ``q @ k.transpose(-2, -1)`` hands to bmm in the plain path, so the
    chunked scores are computed by the same kernel on the same data.
    """
    b, h, t, d = q.shape
    return q.reshape(b * h, t, d), k.transpose(-2, -1).reshape(b * h, d, k.shape[2])


def padding_bias(key_padding_mask: Tensor | None, heads: int, dtype: torch.dtype) -> Tensor | None:
    """(B, S) bool -> (B*H, 1, S) additive mask: -inf on padded keys, 0 elsewhere.

    Adding it gives bitwise the scores ``masked_fill`` gives (x + 0 == x), several times faster
    than a broadcast ``masked_fill_`` on CPU.
    """
    if key_padding_mask is None:
        return None
    bias = torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device)
    bias.masked_fill_(key_padding_mask, float("-inf"))
    return bias.repeat_interleave(heads, dim=0).unsqueeze(1)


def chunk_slices(n: int, t: int, s: int, budget: int) -> range:
    step = max(1, budget // max(1, t * s))
    return range(0, n, step)


def softmax_weights(q: Tensor, k_t: Tensor, bias: Tensor | None) -> Tensor:
    """Softmax of the scores of one chunk: the plain path's bmm, padding and softmax."""
    scores = torch.bmm(q, k_t)
    if bias is not None:
        scores.add_(bias)
    return torch.softmax(scores, dim=-1)


# --- the chunked route (CPU) ---------------------------------------------------------------------
def chunked_attention(q, k, v, key_padding_mask, key_sparse, keep_rate, renormalise, dropout_p):
    b, h, t, _ = q.shape
    s, dv = v.shape[2], v.shape[3]
    q_flat, k_t = flatten_heads(q, k)
    bias = padding_bias(key_padding_mask, h, q.dtype)
    # One dtype throughout (the Function's backward runs outside any autocast region).
    k_t, v_flat = k_t.to(q.dtype), v.reshape(b * h, s, dv).to(q.dtype)
    with torch.autocast(q.device.type, enabled=False):
        out, keep = ChunkedAttention.apply(q_flat, k_t, v_flat, bias, key_sparse, keep_rate, renormalise, dropout_p)
    return out.view(b, h, t, dv), (keep.view(b, h, s) if key_sparse else None)


class DropoutSampler:
    """Element-wise Bernoulli survivors for one forward call: False with probability p.

    Each element gets one uniform 32-bit word from a numpy PCG64DXSM stream, dropped when the
    word (read as int32) is below round(p * 2**32) - 2**31: P(drop) = p within 2**-33. Every
    chunk has its own stream, spawned from a seed drawn from torch's default generator, so
    ``torch.manual_seed`` fixes every mask whichever thread fills which chunk. numpy fills words
    faster than torch's CPU ``random_`` or ``bernoulli_`` (bench/results.md): on CPU the random
    numbers are the largest single cost of attention dropout.
    """

    def __init__(self, p: float) -> None:
        if not 0.0 < p < 1.0:
            raise ValueError(f"dropout rate must be in (0, 1), got {p}")
        self.seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self.threshold = round(p * 2.0**32) - 2**31

    def fill(self, out: Tensor, chunk: int) -> None:
        n = out.numel()
        words = np.random.PCG64DXSM(np.random.SeedSequence((self.seed, chunk)))
        raw = words.random_raw((n + 1) // 2).view(np.int32)[:n]
        torch.ge(torch.from_numpy(raw).view(out.shape), self.threshold, out=out)


# --- running the chunks ----------------------------------------------------------------------------
# With None, the chunks are spread over torch.get_num_threads() threads, each running its torch
# ops single-threaded; 1 runs them in the calling thread with torch's own intra-op threads.
CPU_WORKERS: int | None = None
# Below this many score elements per call (about 20 maps of 460 x 460) the hand-off to the
# pool costs more than it saves: small models train faster in the calling thread, the public
# small configuration (256 maps of 460 x 460) faster through the pool (bench/results.md).
POOL_MIN_ELEMENTS = 1 << 22
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def single_threaded_worker() -> None:
    # Sets this pool thread's OpenMP/MKL thread count (and torch's global default, which
    # worker_pool restores): each chunk is small enough for one core's cache.
    torch.set_num_threads(1)


def worker_pool(size: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    if _pool is None or _pool_size != size:
        if _pool is not None:
            _pool.shutdown()
        caller_threads = torch.get_num_threads()
        _pool, _pool_size = ThreadPoolExecutor(size, "ksr-attention", initializer=single_threaded_worker), size
        # Start every thread now (a barrier keeps each task on its own thread), then give the
        # caller's setting back to torch for any thread started later.
        barrier = threading.Barrier(size)
        for f in [_pool.submit(barrier.wait) for _ in range(size)]:
            f.result()
        torch.set_num_threads(caller_threads)
    return _pool


def _forget_pool_after_fork() -> None:
    # A forked child has none of the parent's threads: it must start its own pool.
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def run_chunks(job, chunks: range, elements: int) -> None:
    """``job(index, lo, hi)`` for every chunk of slices, in parallel where that pays.

    Chunks write disjoint slices, so the order does not matter. Parallel chunks rather than
    parallel ops: a chunk's ~20 small ops then need no thread synchronisation each, which
    matters on 2 cores and even more on a loaded machine. ``elements``: the call's score
    elements (slices x T x S); small calls run in the calling thread (POOL_MIN_ELEMENTS).
    """
    spans = [(i, lo, min(chunks.stop, lo + chunks.step)) for i, lo in enumerate(chunks)]
    workers = min(len(spans), CPU_WORKERS or torch.get_num_threads())
    if CPU_WORKERS is None and elements < POOL_MIN_ELEMENTS:
        workers = 1
    if workers <= 1:
        for span in spans:
            job(*span)
        return

    def run_share(share):
        with torch.no_grad():  # grad mode is per thread; the Function runs without it
            for span in share:
                job(*span)

    # MKL's thread count is process-wide: left at the caller's, each worker's bmm would start
    # a nested OpenMP team whose spinning threads then slow the caller's own matmuls (3x on
    # the demo's linear layers). The caller only waits meanwhile. One caller at a time, so
    # two threads calling attention at once cannot restore each other's setting.
    with _pool_lock:
        pool = worker_pool(workers)
        caller = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for f in [pool.submit(run_share, spans[i::workers]) for i in range(workers)]:
                f.result()
        finally:
            torch.set_num_threads(caller)


def product_into(out: Tensor, a: Tensor, b: Tensor) -> None:
    """``out = a @ b`` for (c, m, k) @ (c, k, n) chunks.

    With n < 16 (head widths of 8), MKL runs the tall-and-skinny product about 3-4x slower
    than the transposed short-and-wide one ``(b^T @ a^T)^T``, so that is computed instead (the
    transposed copy into ``out`` is tiny). From n = 16 on the direct product is as fast or faster.
    """
    if out.shape[-1] < 16:
        out.copy_(torch.bmm(b.transpose(1, 2), a.transpose(1, 2)).transpose(1, 2))
    else:
        torch.bmm(a, b, out=out)


class ChunkedAttention(torch.autograd.Function):
    """out = dropout(KS(softmax(q k^T + bias))) @ v, walking batch x head slices in chunks.

    Saved for backward: q, k^T, the scaled/masked V, the output, the keep mask and the bool
    dropout survivors; the softmax is recomputed chunk by chunk.
    """

    @staticmethod
    def forward(ctx, q, k_t, v, bias, key_sparse, keep_rate, renormalise, dropout_p):
        n, t, _ = q.shape
        s, dv = v.shape[1:]
        out = q.new_empty(n, t, dv)
        v_eff = torch.empty_like(v)
        keep = torch.ones(n, s, dtype=torch.bool, device=q.device)
        survivors = torch.empty(n, t, s, dtype=torch.bool, device=q.device) if dropout_p > 0 else None
        sampler = DropoutSampler(dropout_p) if dropout_p > 0 else None

        def chunk(index, lo, hi):
            w = softmax_weights(q[lo:hi], k_t[lo:hi], None if bias is None else bias[lo:hi])
            if key_sparse:
                # KS_COLUMN_SUMS_OVER_ALL_QUERIES: every query row of the slice counts.
                keep[lo:hi] = ks.select_keys(w.sum(dim=-2), keep_rate)
                if renormalise:
                    w = ks.sparsify(w, keep[lo:hi], True)
            scale = ks.value_scale(keep[lo:hi] if key_sparse else None, renormalise, dropout_p, v.dtype)
            torch.mul(v[lo:hi], scale, out=v_eff[lo:hi])
            if sampler is not None:
                sampler.fill(survivors[lo:hi], index)
                w.mul_(survivors[lo:hi].view(torch.uint8))  # a uint8 multiply beats masked_fill_
            product_into(out[lo:hi], w, v_eff[lo:hi])

        run_chunks(chunk, chunk_slices(n, t, s, CPU_CHUNK_ELEMENTS), n * t * s)
        ctx.save_for_backward(q, k_t, v_eff, out, bias, keep, survivors)
        ctx.key_sparse, ctx.renormalise, ctx.dropout_p = key_sparse, renormalise, dropout_p
        ctx.mark_non_differentiable(keep)
        return out, keep

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, _grad_keep):
        q, k_t, v_eff, out, bias, keep, survivors = ctx.saved_tensors
        n, t, _ = q.shape
        s = k_t.shape[-1]
        grad_out = grad_out.contiguous()
        # Softmax backward needs rowsum(dW * W) = rowsum(dO * out), out = (W * M) @ V_eff.
        row_dot = (grad_out * out).sum(dim=-1, keepdim=True)  # (n, t, 1)
        grad_q, grad_k, grad_v = torch.empty_like(q), q.new_empty(n, s, q.shape[-1]), torch.empty_like(v_eff)
        renormalised = ctx.key_sparse and ctx.renormalise

        def chunk(_index, lo, hi):
            w = softmax_weights(q[lo:hi], k_t[lo:hi], None if bias is None else bias[lo:hi])
            if renormalised:
                w = ks.sparsify(w, keep[lo:hi], True)
            mask = None if survivors is None else survivors[lo:hi].view(torch.uint8)
            dropped_w = w if mask is None else w * mask
            product_into(grad_v[lo:hi], dropped_w.transpose(1, 2), grad_out[lo:hi])  # P^T dO
            grad_w = torch.bmm(grad_out[lo:hi], v_eff[lo:hi].transpose(1, 2))  # dO V_eff^T
            if mask is not None:
                grad_w.mul_(mask)
            grad_scores = grad_w.sub_(row_dot[lo:hi]).mul_(w)
            product_into(grad_q[lo:hi], grad_scores, k_t[lo:hi].transpose(1, 2))  # dS k
            product_into(grad_k[lo:hi], grad_scores.transpose(1, 2), q[lo:hi])  # dS^T q

        run_chunks(chunk, chunk_slices(n, t, s, CPU_CHUNK_ELEMENTS), n * t * s)
        # v_eff = v * scale: chain rule through the per-key scale.
        grad_v.mul_(ks.value_scale(keep if ctx.key_sparse else None, ctx.renormalise, ctx.dropout_p, v_eff.dtype))
        return grad_q, grad_k.transpose(1, 2), grad_v, None, None, None, None, None


# --- the SDPA route (GPU) ----------------------------------------------------------------------
@torch.no_grad()
def column_sums(q: Tensor, k: Tensor, key_padding_mask: Tensor | None, budget: int = GPU_CHUNK_ELEMENTS) -> Tensor:
    """(B, H, S): the softmax weights each key receives, summed over ALL query rows.

    Computed chunk by chunk over batch x head slices without grad, with the plain path's kernels,
    so each slice's sums are bitwise the plain path's.
    """
    b, h, t, _ = q.shape
    s = k.shape[2]
    q_flat, k_t = flatten_heads(q, k)
    bias = padding_bias(key_padding_mask, h, q.dtype)
    sums = q.new_empty(b * h, s, dtype=torch.promote_types(q.dtype, torch.float32))
    chunks = chunk_slices(b * h, t, s, budget)
    for lo in chunks:
        hi = min(b * h, lo + chunks.step)
        sums[lo:hi] = softmax_weights(q_flat[lo:hi], k_t[lo:hi], None if bias is None else bias[lo:hi]).sum(dim=-2)
    return sums.view(b, h, s)


def sdpa_attention(q, k, v, key_padding_mask, key_sparse, keep_rate, renormalise, dropout_p):
    allowed = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
    keep = None
    if key_sparse:
        # KS_COLUMN_SUMS_OVER_ALL_QUERIES: padded query rows count too.
        keep = ks.select_keys(column_sums(q, k, key_padding_mask), keep_rate)
        if renormalise:
            # Renormalised KS weights are a softmax over the kept keys: mask the others.
            kept = keep.unsqueeze(-2)
            allowed = kept if allowed is None else allowed & kept
        else:
            v = v * ks.value_scale(keep, False, 0.0, v.dtype)
    # q is already scaled by head_dim**-0.5, as in the plain path.
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p, scale=1.0)
    return out, keep
