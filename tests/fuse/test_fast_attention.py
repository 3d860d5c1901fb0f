"""The fast attention path against the plain one (the public code's operations), in float32.

Outputs and every gradient must agree to a relative error of 1e-5 (max |fast - plain| over
max |plain|), in eval mode and in train mode with dropout off, for self and cross attention,
every keep rate, padding, odd lengths and keys tied on purpose, on both fast backends
("chunked", the CPU default, and "sdpa", the GPU default, which also runs on CPU).
"""

from __future__ import annotations

import math

import pytest
import torch
from support.model_inputs import padded_inputs, small_config

from ksr.fuse import KSTransformer, ModelConfig
from ksr.fuse.model import fast_attention, key_sparse
from ksr.fuse.model.attention import MultiheadAttention

KEEP_RATES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
BACKENDS = list(fast_attention.BACKENDS)
TOL = 1e-5


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = want.abs().max().clamp_min(1e-30)
    return float((got - want).abs().max() / scale)


def assert_close_rel(got, want, what, scale=None):
    assert got.shape == want.shape, what
    assert torch.isfinite(got).all(), what
    err = rel_err(got, want) if scale is None else float((got - want).abs().max() / scale)
    assert err <= TOL, f"{what}: relative error {err:.2e}"


def assert_grads_close(got: dict, want: dict) -> None:
    """Every gradient within TOL of the plain one, relative to its own largest entry.

    The key projection's bias is the exception: adding a constant to every key's score leaves
    the softmax unchanged, so its exact gradient is zero and both paths return rounding noise.
    It is compared relative to the key projection weight's gradient instead.
    """
    assert set(got) == set(want)
    for name, g in want.items():
        scale = None
        if name.endswith("project_k.bias"):
            scale = want[name[: -len("bias")] + "weight"].abs().max()
        assert_close_rel(got[name], g, f"grad {name}", scale)


def twin_modules(
    cross: bool,
    keep_rate: float,
    key_sparse: bool = True,
    renormalise: bool = False,
    backend: str = "chunked",
    dim: int = 16,
    kdim: int = 12,
    heads: int = 4,
):
    """A plain and a fast MultiheadAttention with the same weights."""
    kw = dict(
        kdim=kdim if cross else None, dropout=0.0, key_sparse=key_sparse, keep_rate=keep_rate, renormalise=renormalise
    )
    plain = MultiheadAttention(dim, heads, impl="plain", **kw)
    fast = MultiheadAttention(dim, heads, impl="fast", **kw)
    fast.load_state_dict(plain.state_dict())
    fast.fast_backend = backend
    return plain, fast


def run_with_grads(mha, query, key, mask):
    """Output, and the gradients of a fixed random projection of it w.r.t. inputs and weights."""
    query = query.clone().requires_grad_(True)
    key = None if key is None else key.clone().requires_grad_(True)
    mha.zero_grad(set_to_none=True)
    out = mha(query, key, key, mask)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(99))
    (out * probe).sum().backward()
    grads = {"query": query.grad}
    if key is not None:
        grads["key"] = key.grad
    grads.update({name: p.grad for name, p in mha.named_parameters()})
    return out.detach(), grads, weights_used(mha, query, key, mask)


@torch.no_grad()
def weights_used(mha, query, key, mask):
    """The (B, H, T, S) weights the module applied: on the fast path, softmax weights with the
    keep mask the fast kernels computed themselves (not recomputed by the plain rule)."""
    if mha.impl == "plain":
        return mha.attention_map(query, key, key, mask)
    q, k, v = mha.project(query, key, key)
    _, keep = fast_attention.attend(
        q,
        k,
        v,
        mask,
        key_sparse=mha.key_sparse,
        keep_rate=mha.keep_rate,
        renormalise=mha.renormalise,
        dropout_p=0.0,
        backend=mha.fast_backend,
    )
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(mask[:, None, None, :], float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights if keep is None else key_sparse.sparsify(weights, keep, mha.renormalise)


def padded_mask(batch: int, length: int) -> torch.Tensor:
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[1, length - 5 :] = True  # a few padded keys
    mask[2, 4:] = True  # mostly padding
    return mask


def compare(plain, fast, query, key, mask):
    want, want_grads, want_w = run_with_grads(plain, query, key, mask)
    got, got_grads, got_w = run_with_grads(fast, query, key, mask)
    assert torch.equal(got_w == 0, want_w == 0)  # the same keys dropped, the same padding
    assert_close_rel(got_w, want_w, "recorded weights")
    assert_close_rel(got, want, "output")
    assert_grads_close(got_grads, want_grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["eval", "train-no-dropout"])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("keep_rate", KEEP_RATES)
def test_fast_matches_plain_key_sparse(keep_rate, cross, mode, backend):
    torch.manual_seed(int(keep_rate * 10) + 100 * cross)
    plain, fast = twin_modules(cross, keep_rate, backend=backend)
    for m in (plain, fast):
        m.train(mode != "eval")
    t, s = 19, (23 if cross else 19)  # odd lengths
    query = torch.randn(3, t, 16)
    key = torch.randn(3, s, 12) if cross else None
    compare(plain, fast, query, key, padded_mask(3, s))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "padded"])
def test_fast_matches_plain_vanilla(cross, masked, backend):
    plain, fast = twin_modules(cross, 0.5, key_sparse=False, backend=backend)
    s = 13 if cross else 17
    query = torch.randn(3, 17, 16)
    key = torch.randn(3, s, 12) if cross else None
    compare(plain.train(), fast.train(), query, key, padded_mask(3, s) if masked else None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("keep_rate", [0.2, 0.5, 0.9])
def test_fast_matches_plain_renormalised(keep_rate, backend):
    plain, fast = twin_modules(True, keep_rate, renormalise=True, backend=backend)
    compare(plain.eval(), fast.eval(), torch.randn(3, 15, 16), torch.randn(3, 21, 12), padded_mask(3, 21))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("keep_rate", [0.25, 0.5, 0.75])
def test_constructed_ties_keep_more_on_both_paths(keep_rate, cross, backend):
    """Duplicated key tokens give bitwise-equal columns: ties at the threshold must stay ties."""
    torch.manual_seed(3)
    plain, fast = twin_modules(cross, keep_rate, backend=backend)
    s = 12
    tokens = torch.randn(2, s, 12 if cross else 16) * 0.05
    tokens[:, :6] = torch.randn(2, 1, tokens.shape[-1]) * 2.0  # six identical, well-attended keys
    query = torch.randn(2, 9, 16) if cross else tokens
    compare(plain.eval(), fast.eval(), query, tokens if cross else None, None)
    kept = (weights_used(plain, query, tokens if cross else None, None) != 0).any(dim=-2)  # (B, H, S)
    n = int(s * keep_rate)
    assert (kept.sum(-1) >= n).all()
    # the duplicates are kept or dropped together, and somewhere more than n keys survive a tie
    dup = kept[..., :6]
    assert (dup.all(-1) | ~dup.any(-1)).all()
    if n < 6:
        assert (kept.sum(-1) > n).any()


@pytest.mark.parametrize("t, s", [(460, 460), (460, 20), (20, 460), (33, 17)])
def test_column_sums_are_bitwise_the_plain_ones(t, s):
    """Chunking the batch x head slices must not change a single column sum (nor a kept key)."""
    b, h, d = 3, 8, 8
    q, k = torch.randn(b, h, t, d) * d**-0.5, torch.randn(b, h, s, d)
    mask = torch.zeros(b, s, dtype=torch.bool)
    mask[1, s // 2 :] = True
    scores = (q @ k.transpose(-2, -1)).masked_fill(mask[:, None, None, :], float("-inf"))
    want = torch.softmax(scores, dim=-1).sum(dim=-2)
    for budget in (1, 3 * t * s, 1 << 30):  # one slice per chunk, three, all at once
        assert torch.equal(fast_attention.column_sums(q, k, mask, budget=budget), want)
    v = torch.randn(b, h, s, d)
    _, keep = fast_attention.attend(
        q, k, v, mask, key_sparse=True, keep_rate=0.5, renormalise=False, dropout_p=0.0, backend="chunked"
    )
    assert torch.equal(keep, key_sparse.select_keys(want, 0.5))


def model_pair(cfg: ModelConfig, backend: str):
    plain = KSTransformer(cfg.replace(attention_impl="plain"))
    fast = KSTransformer(cfg.replace(attention_impl="fast"))
    fast.load_state_dict(plain.state_dict())
    for m in fast.modules():
        if isinstance(m, MultiheadAttention):
            m.fast_backend = backend
    return plain, fast


def logits_and_grads(model, inputs, labels):
    model.zero_grad(set_to_none=True)
    logits = model(*inputs)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("mode", ["eval", "train-no-dropout"])
@pytest.mark.parametrize(
    "keep_rate, backend", [(r, "chunked") for r in KEEP_RATES] + [(r, "sdpa") for r in (0.1, 0.5, 0.9)]
)
def test_model_logits_and_every_gradient_match(keep_rate, backend, mode):
    cfg = small_config(
        keep_rate=keep_rate, num_layers=(2, 1, 1), dropout=0.0, attention_dropout=0.0, classifier_dropout=0.0
    )
    plain, fast = model_pair(cfg, backend)
    inputs = padded_inputs(cfg, [41, 23, 9], [13, 6, 2], ta=41, tt=13, seed=4)
    labels = torch.tensor([0, 3, 1])
    for m in (plain, fast):
        m.train(mode != "eval")
    want, want_grads = logits_and_grads(plain, inputs, labels)
    got, got_grads = logits_and_grads(fast, inputs, labels)
    assert_close_rel(got, want, "logits")
    assert_grads_close(got_grads, want_grads)


def test_fast_is_the_default_and_plain_stays_available():
    assert ModelConfig().attention_impl == "fast"
    assert ModelConfig(attention_impl="plain").attention_impl == "plain"
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        ModelConfig(attention_impl="flash")
    with pytest.raises(ValueError, match="unknown attention backend"):
        q = torch.randn(1, 1, 4, 2)
        fast_attention.attend(
            q, q, q, None, key_sparse=False, keep_rate=0.5, renormalise=False, dropout_p=0.0, backend="magic"
        )


# --- dropout: same semantics as the plain path --------------------------------------------------
def identity_values(n: int, s: int) -> torch.Tensor:
    """V = I per slice, so that the attention output IS the (dropped-out) weight matrix."""
    return torch.eye(s).expand(n, 1, s, s).clone()


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_is_a_bernoulli_on_the_masked_weights(backend):
    torch.manual_seed(5)
    b, h, t, s, p = 4, 1, 64, 50, 0.25
    q, k = torch.randn(b, h, t, 8) * 0.5, torch.randn(b, h, s, 8)
    v = identity_values(b, s)
    mask = torch.zeros(b, s, dtype=torch.bool)
    mask[0, 40:] = True
    common = dict(key_sparse=True, keep_rate=0.5, renormalise=False, backend=backend)
    weights, keep = fast_attention.attend(q, k, v, mask, dropout_p=0.0, **common)
    dropped, keep_again = fast_attention.attend(q, k, v, mask, dropout_p=p, **common)
    assert torch.equal(keep, keep_again)
    live = weights != 0  # kept, unpadded keys
    survivors = dropped != 0
    assert not (survivors & ~live).any()  # dropout never revives a masked column
    torch.testing.assert_close(dropped[survivors], weights[survivors] / (1 - p), rtol=1e-5, atol=1e-7)
    frac = 1 - survivors[live].double().mean().item()
    sigma = math.sqrt(p * (1 - p) / live.sum().item())
    assert abs(frac - p) < 5 * sigma, (frac, p)


def test_chunked_dropout_gradients_are_exact():
    """With the generator reset before each call, dropout is a fixed mask: gradcheck applies."""
    torch.manual_seed(0)
    q = torch.randn(2, 1, 5, 2, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 1, 7, 2, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 1, 7, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 5:] = True
    for renormalise in (False, True):

        def f(q, k, v, renormalise=renormalise):
            torch.manual_seed(11)
            return fast_attention.attend(
                q, k, v, mask, key_sparse=True, keep_rate=0.5, renormalise=renormalise, dropout_p=0.3, backend="chunked"
            )[0]

        assert torch.autograd.gradcheck(f, (q, k, v))


def test_chunk_threads_change_nothing(monkeypatch):
    """Results, dropout masks included, do not depend on how many threads share the chunks;
    the caller's torch thread count survives the worker pool."""
    q, k, v = torch.randn(3, 4, 30, 8), torch.randn(3, 4, 26, 8), torch.randn(3, 4, 26, 8)
    mask = padded_mask(3, 26)
    monkeypatch.setattr(fast_attention, "CPU_CHUNK_ELEMENTS", 30 * 26 * 2)  # two slices a chunk
    outs = []
    threads = torch.get_num_threads()
    for workers in (1, 2, 3):
        monkeypatch.setattr(fast_attention, "CPU_WORKERS", workers)
        torch.manual_seed(7)
        outs.append(
            fast_attention.attend(
                q, k, v, mask, key_sparse=True, keep_rate=0.4, renormalise=False, dropout_p=0.2, backend="chunked"
            )[0]
        )
        assert torch.get_num_threads() == threads
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_model_trains_with_dropout_on_the_fast_path():
    cfg = small_config()
    model = KSTransformer(cfg).train()
    inputs = padded_inputs(cfg, [37, 20, 9], [11, 6, 3])
    torch.manual_seed(1)
    a = model(*inputs)
    torch.manual_seed(1)
    b = model(*inputs)
    torch.manual_seed(2)
    c = model(*inputs)
    assert torch.equal(a, b)  # dropout follows torch's default generator
    assert not torch.equal(a, c)
    torch.nn.functional.cross_entropy(a, torch.tensor([0, 1, 3])).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_small_calls_stay_in_the_calling_thread(monkeypatch):
    """Below POOL_MIN_ELEMENTS score elements a call never hands chunks to the pool; at or above
    it, the chunks are shared out (with CPU_WORKERS left to choose)."""
    monkeypatch.setattr(fast_attention, "CPU_WORKERS", None)
    threads = torch.get_num_threads()
    fast_attention.worker_pool(2)  # started for real, before the thread calls are faked
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # leave the real count alone
    used = []
    real_pool = fast_attention.worker_pool
    monkeypatch.setattr(fast_attention, "worker_pool", lambda size: used.append(size) or real_pool(size))
    ran = []
    chunks = range(0, 8, 2)  # 4 chunks
    fast_attention.run_chunks(lambda i, lo, hi: ran.append(i), chunks, fast_attention.POOL_MIN_ELEMENTS - 1)
    assert used == [] and sorted(ran) == [0, 1, 2, 3]
    ran.clear()
    fast_attention.run_chunks(lambda i, lo, hi: ran.append(i), chunks, fast_attention.POOL_MIN_ELEMENTS)
    assert used == [2] and sorted(ran) == [0, 1, 2, 3]
    monkeypatch.undo()
    assert torch.get_num_threads() == threads


def _mkl_threads() -> int | None:
    for line in torch.__config__.parallel_info().splitlines():
        if "mkl_get_max_threads()" in line:
            return int(line.split(":")[-1])
    return None


@pytest.mark.skipif(_mkl_threads() is None, reason="torch is built without MKL")
def test_pool_workers_run_mkl_single_threaded(monkeypatch):
    """MKL's thread count is process-wide: while the pool works it is 1 (no nested OpenMP teams
    inside the workers), and the caller's count is back afterwards."""
    monkeypatch.setattr(fast_attention, "CPU_WORKERS", 2)
    before = _mkl_threads()
    seen = []
    fast_attention.run_chunks(lambda i, lo, hi: seen.append(_mkl_threads()), range(0, 4, 1), 1 << 30)
    assert seen == [1, 1, 1, 1]
    assert _mkl_threads() == before
