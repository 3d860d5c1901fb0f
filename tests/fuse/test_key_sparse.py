"""The key-sparse step against a plain computation written here from the reference text."""

from __future__ import annotations

import math

import pytest
import torch

from ksr.fuse.model import key_sparse
from ksr.fuse.model.attention import MultiheadAttention

KEEP_RATES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def plain_key_sparse(weights: torch.Tensor, keep_rate: float) -> torch.Tensor:
    """Per (batch, head): sum each key's column over ALL query rows, keep keys whose sum is >=
    the n-th largest (n = int(S * keep_rate), S counting padding), zero the others' columns,
    no renormalisation."""
    out = weights.clone()
    batch, heads, _, s = weights.shape
    n = int(s * keep_rate)
    for b in range(batch):
        for h in range(heads):
            sums = [float(sum(weights[b, h, :, j].tolist())) for j in range(s)]
            threshold = sorted(sums, reverse=True)[n - 1]
            for j in range(s):
                if sums[j] < threshold:
                    out[b, h, :, j] = 0.0
    return out


def plain_attention(mha: MultiheadAttention, query, key, mask, keep_rate):
    """Attention computed head by head with Python-level loops, float64."""
    with torch.no_grad():
        if mha.is_self:
            q, k, v = mha.project_qkv(query).chunk(3, dim=-1)
        else:
            q, k, v = mha.project_q(query), mha.project_k(key), mha.project_v(key)
        b, t, d = q.shape
        hd = d // mha.num_heads
        weights = torch.zeros(b, mha.num_heads, t, k.shape[1], dtype=q.dtype)
        for i in range(b):
            for h in range(mha.num_heads):
                c = slice(h * hd, (h + 1) * hd)
                scores = q[i, :, c] @ k[i, :, c].T / math.sqrt(hd)
                if mask is not None:
                    scores[:, mask[i]] = -math.inf
                weights[i, h] = torch.softmax(scores, dim=-1)
        weights = plain_key_sparse(weights, keep_rate)
        out = torch.zeros_like(q)
        for i in range(b):
            for h in range(mha.num_heads):
                c = slice(h * hd, (h + 1) * hd)
                out[i, :, c] = weights[i, h] @ v[i, :, c]
        return mha.project_out(out), weights


def softmax_rows(b, h, t, s, seed, mask=None):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, h, t, s, generator=g, dtype=torch.float64)
    if mask is not None:
        scores = scores.masked_fill(mask[:, None, None, :], -math.inf)
    return torch.softmax(scores, dim=-1)


@pytest.mark.parametrize("keep_rate", KEEP_RATES)
@pytest.mark.parametrize("s", [7, 20, 33])
def test_keep_mask_matches_plain_rule_with_padding(keep_rate, s):
    mask = torch.zeros(3, s, dtype=torch.bool)
    mask[1, s - 3 :] = True
    mask[2, s // 2 :] = True
    w = softmax_rows(3, 2, 5, s, seed=s, mask=mask)
    if int(s * keep_rate) < 1:
        with pytest.raises(ValueError, match="keeps int"):
            key_sparse.select_keys(w.sum(-2), keep_rate)
        return
    keep = key_sparse.select_keys(w.sum(dim=-2), keep_rate)
    got = key_sparse.sparsify(w, keep, renormalise=False)
    assert torch.equal(got, plain_key_sparse(w, keep_rate))


def test_padded_keys_count_towards_n():
    # S = 10 with 6 padded keys: n = int(10 * 0.5) = 5 counts the padding, so all 4 real keys
    # (and one zero-scored padded key tied with the others at 0) stay.
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, 4:] = True
    w = softmax_rows(1, 1, 3, 10, seed=0, mask=mask)
    keep = key_sparse.select_keys(w.sum(-2), 0.5)
    assert keep[0, 0, :4].all()
    # padded columns sum to 0 and tie with the 5th largest (0): ties keep more, all stay
    assert keep.all()


def test_ties_at_threshold_keep_more_than_n():
    # Four query rows whose column sums are 1.0, 0.75, 0.75, 0.75, 0.5, 0.25 (exact in binary).
    w = torch.tensor(
        [
            [0.25, 0.25, 0.25, 0.25, 0.0, 0.0],
            [0.25, 0.25, 0.25, 0.0, 0.25, 0.0],
            [0.25, 0.25, 0.0, 0.25, 0.25, 0.0],
            [0.25, 0.0, 0.25, 0.25, 0.0, 0.25],
        ],
        dtype=torch.float64,
    )[None, None]
    sums = w.sum(-2)
    assert sums.flatten().tolist() == [1.0, 0.75, 0.75, 0.75, 0.5, 0.25]
    keep = key_sparse.select_keys(sums, 0.5)  # n = 3, threshold 0.75: four keys tie or beat it
    assert keep.flatten().tolist() == [True, True, True, True, False, False]
    out = key_sparse.sparsify(w, keep, renormalise=False)
    assert torch.equal(out, plain_key_sparse(w, 0.5))
    # no renormalisation: rows that lost weight sum to less than one
    assert out.sum(-1).flatten().tolist() == [1.0, 0.75, 0.75, 0.75]


def test_renormalise_option_rescales_rows():
    w = softmax_rows(2, 2, 4, 9, seed=3)
    keep = key_sparse.select_keys(w.sum(-2), 0.4)
    out = key_sparse.sparsify(w, keep, renormalise=True)
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 2, 4, dtype=torch.float64))


@pytest.mark.parametrize("keep_rate", KEEP_RATES)
@pytest.mark.parametrize("cross", [False, True])
def test_attention_module_matches_plain_loops(keep_rate, cross):
    torch.manual_seed(int(keep_rate * 10) + 100 * cross)
    d, kd = 16, 12
    mha = MultiheadAttention(d, 4, kdim=kd if cross else None, key_sparse=True, keep_rate=keep_rate).double().eval()
    s = 23 if cross else 17  # odd lengths
    query = torch.randn(3, 17, d, dtype=torch.float64)
    key = torch.randn(3, s, kd, dtype=torch.float64) if cross else None
    mask = torch.zeros(3, s, dtype=torch.bool)
    mask[1, -5:] = True
    mask[2, 4:] = True
    got = mha(query, key, key, mask)
    want, want_w = plain_attention(mha, query, key if cross else query, mask, keep_rate)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    weights = mha.attention_map(query, key, key, mask)
    assert torch.equal(weights == 0, want_w == 0)  # same keys dropped
    torch.testing.assert_close(weights, want_w, rtol=1e-10, atol=1e-12)


def test_attention_module_keeps_tied_duplicate_keys():
    # Keys 0..3 are copies of one vector: their softmax columns are bitwise equal, so they tie.
    torch.manual_seed(7)
    mha = MultiheadAttention(8, 2, kdim=8, key_sparse=True, keep_rate=0.25).double().eval()
    query = torch.randn(1, 5, 8, dtype=torch.float64)
    key = torch.randn(1, 9, 8, dtype=torch.float64) * 0.01
    key[0, :4] = torch.randn(8, dtype=torch.float64) * 3
    got = mha(query, key, key)
    kept = (mha.attention_map(query, key, key) != 0).any(dim=-2)  # (1, heads, S)
    n = int(9 * 0.25)  # 2
    assert (kept.sum(-1) >= n).all()
    want, _ = plain_attention(mha, query, key, None, 0.25)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # where the duplicated keys are kept at all, all four are kept together (ties keep more than n)
    for h in range(2):
        dup = kept[0, h, :4]
        assert dup.all() or not dup.any()
    assert kept[0, :, :4].all(dim=-1).any()


def test_vanilla_attention_is_plain_softmax():
    torch.manual_seed(0)
    mha = MultiheadAttention(8, 2, key_sparse=False).double().eval()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    weights = mha.attention_map(x)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 6, dtype=torch.float64))
    assert (weights > 0).all()
