"""ksr.cache helpers: unthreaded conversion copies, row splitting over threads, finiteness."""

import numpy as np
import torch

from ksr.cache.convert import (
    BufferPool,
    all_finite,
    copy_unthreaded,
    gather_pieces,
    pieces_per_row,
    row_pieces,
    valid_pieces,
)


def test_pieces_per_row():
    assert pieces_per_row(460 * 512) == 8  # 8 x 29,440
    assert pieces_per_row(20 * 1024) == 1
    assert pieces_per_row(460 * 768) == 12
    assert pieces_per_row(7) == 1
    assert pieces_per_row(99991) == 1  # a prime: one whole-row piece rather than 99,991
    for n in (32768, 32769 * 2, 460 * 1024, 2 * 3 * 5 * 7 * 11 * 13 * 17):
        k = pieces_per_row(n)
        assert n % k == 0 and n // k <= 32768


def test_gather_pieces_copies_valid_pieces_and_zeroes_the_rest():
    k = pieces_per_row(46 * 800)  # 2 pieces of 23 frames
    assert k == 2
    src = torch.randn(10, 46, 800).half()
    pieces = row_pieces(src, k)
    order, valid = [7, 0, 7, 3], [2, 1, 0, 2]
    out = torch.full((4, 46, 800), 5.0)  # stale values from an earlier batch
    gather_pieces(out, pieces, [p * k for p in order], valid, k)
    want = src[order].float()
    want[1, 23:] = 0  # one valid piece: frames 23.. are zeroed, not read
    want[2] = 0
    assert torch.equal(out, want)


def test_valid_pieces():
    # rows of 460 frames x 512 in 8 pieces of 57.5 frames
    assert valid_pieces([1, 57, 58, 115, 116, 459, 460], 460, 512, 8).tolist() == [1, 1, 2, 2, 3, 8, 8]
    assert valid_pieces([1, 20], 20, 1024, 1).tolist() == [1, 1]


def test_copy_unthreaded_matches_plain_conversion():
    dst = torch.empty(3, 40000, dtype=torch.float16)
    x = torch.randn(3, 40000, dtype=torch.float64)
    copy_unthreaded(dst, x)
    assert torch.equal(dst, x.half())


def test_all_finite():
    big = np.array([65504.0, -65504.0, 1e-8, 0.0], np.float16)
    assert all_finite(big)
    assert not all_finite(np.array([1.0, np.inf], np.float16))
    assert not all_finite(np.array([np.nan], np.float16))
    assert not all_finite(np.array([1.0, np.nan], np.float32))
    assert all_finite(np.arange(5))


def test_buffer_pool_reuses_memory_only_once_nothing_uses_it():
    pool = BufferPool(keep=2)
    a = pool.empty((4, 100), torch.float32)
    a.fill_(1.0)
    ptr = a.data_ptr()
    del a  # nothing refers to the memory any more: it goes back to the pool
    b = pool.empty((4, 100), torch.float32)
    assert b.data_ptr() == ptr

    kept = b[1:3, :10]  # a view outlives its tensor: the memory must not be handed out again
    kept.fill_(7.0)
    del b
    c = pool.empty((4, 100), torch.float32)
    c.fill_(0.0)
    assert c.data_ptr() != ptr and bool((kept == 7.0).all())
    arr = c.numpy()  # a numpy array of the tensor keeps the memory too
    ptr_c = c.data_ptr()
    del c
    assert pool.empty((4, 100), torch.float32).data_ptr() != ptr_c
    del arr, kept
    assert pool.empty((4, 100), torch.float32).data_ptr() in (ptr, ptr_c)

    assert pool.empty((2, 3), torch.bfloat16).dtype == torch.bfloat16  # no numpy twin: plain


def test_batches_reuse_memory_without_clobbering_kept_batches(tmp_path):
    from ksr.cache import open_cache
    from ksr.cache.synthetic import synthetic_meta, write_synthetic_cache

    write_synthetic_cache(tmp_path, 6, synthetic_meta(8, 6), seed=2)
    for mode in ("memory", "stream"):
        cache = open_cache(tmp_path, mode=mode, progress=False)
        batches = [cache.batch([i, 5 - i]) for i in range(3)]  # all kept: all distinct memory
        assert len({b.audio.data_ptr() for b in batches}) == 3
        for i, b in enumerate(batches):
            assert b.ids == [cache.ids[i], cache.ids[5 - i]]
            assert torch.equal(b.audio, cache.batch([i, 5 - i]).audio)
        ptrs = {b.audio.data_ptr() for b in batches}
        del batches, b
        assert cache.batch([0, 1]).audio.data_ptr() in ptrs  # released memory is reused
