"""A deliberately plain KS-Transformer forward, written from the reference text alone.

It shares no code with ``ksr.fuse``: it reads a state dict under the PUBLIC implementation's
tensor names and computes every attention head of every batch item in explicit loops (float64
recommended), so that the model's vectorised code is checked against an independent computation.
Its ``quirks`` flags switch one documented behaviour at a time, to show each one matters.
"""

from __future__ import annotations

import math

import torch

FAITHFUL = dict(mask_ccab_self=False, mask_fusion=False, double_residual=True, masked_pooling=False, renormalise=False)


def layer_norm(x, sd, name, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * sd[name + ".weight"] + sd[name + ".bias"]


def linear(x, sd, name):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def keep_columns(col_sums, keep_rate):
    """Keys kept: n = int(S * keep_rate) over the full length; ties with the n-th largest stay."""
    s = len(col_sums)
    n = int(s * keep_rate)
    ordered = sorted(col_sums.tolist(), reverse=True)
    threshold = ordered[n - 1]
    return [float(c) >= threshold for c in col_sums.tolist()]


def attention(sd, name, q_in, k_in, v_in, mask, heads, key_sparse, keep_rate, renormalise):
    if name + ".project_qkv.weight" in sd:
        q, k, v = linear(q_in, sd, name + ".project_qkv").chunk(3, dim=-1)
    else:
        q, k, v = (
            linear(q_in, sd, name + ".project_q"),
            linear(k_in, sd, name + ".project_k"),
            linear(v_in, sd, name + ".project_v"),
        )
    batch, tq, dim = q.shape
    hd = dim // heads
    out = torch.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            cols = slice(h * hd, (h + 1) * hd)
            scores = (q[b, :, cols] * hd**-0.5) @ k[b, :, cols].T
            if mask is not None:
                scores[:, mask[b]] = -math.inf
            w = torch.softmax(scores, dim=-1)
            if key_sparse:
                col_sums = w.sum(dim=0)  # over all query rows, padded ones included
                kept = torch.tensor(keep_columns(col_sums, keep_rate))
                w = w * kept.to(w.dtype)
                if renormalise:
                    w = w / w.sum(dim=-1, keepdim=True)
            out[b, :, cols] = w @ v[b, :, cols]
    return linear(out, sd, name + ".project_out")


def block(sd, name, x, key, mask, heads, key_sparse, keep_rate, renormalise=False):
    x = layer_norm(x, sd, name + ".query_input_norm")
    cross = name + ".key_input_norm.weight" in sd
    if cross:
        key = layer_norm(key, sd, name + ".key_input_norm")
    i = 0
    while f"{name}.layers.{i}.fc1.weight" in sd:
        layer = f"{name}.layers.{i}"
        q_in = x + sd[name + ".query_position"][: x.shape[1]]
        if cross:
            k_in, v_in = key + sd[name + ".key_position"][: key.shape[1]], key
        else:
            k_in = v_in = q_in
        a = attention(sd, layer + ".attention", q_in, k_in, v_in, mask, heads, key_sparse, keep_rate, renormalise)
        x = layer_norm(x + a, sd, layer + ".attention_layer_norm")
        hidden = torch.relu(linear(x, sd, layer + ".fc1"))
        x = layer_norm(x + linear(hidden, sd, layer + ".fc2"), sd, layer + ".final_layer_norm")
        i += 1
    return x


def ccab_stack(sd, name, x, other, other_mask, own_mask, heads, keep_rate, q):
    out = x
    i = 0
    while f"{name}.CCABs_model.{i}.ks_trans_1.query_position" in sd:
        out = block(
            sd, f"{name}.CCABs_model.{i}.ks_trans_1", out, other, other_mask, heads, True, keep_rate, q["renormalise"]
        )
        out = block(
            sd,
            f"{name}.CCABs_model.{i}.ks_trais_2",
            out,
            None,
            own_mask if q["mask_ccab_self"] else None,
            heads,
            True,
            keep_rate,
            q["renormalise"],
        )
        i += 1
    return out + x


def forward(sd, audio, text, audio_mask, text_mask, heads=8, keep_rate=0.5, **quirk_changes):
    """Logits of the public model held in ``sd`` (public key names), in eval mode."""
    q = dict(FAITHFUL, **quirk_changes)
    a = block(sd, "audio_self_Trans", audio, None, audio_mask, heads, False, keep_rate)
    t = block(sd, "text_self_Trans", text, None, text_mask, heads, False, keep_rate)
    a_int = ccab_stack(sd, "at_cross_Trans", a, t, text_mask, audio_mask, heads, keep_rate, q)
    t_int = ccab_stack(sd, "ta_cross_Trans", t, a, audio_mask, text_mask, heads, keep_rate, q)
    a = a + a_int if q["double_residual"] else a_int
    t = t + t_int if q["double_residual"] else t_int
    a = block(
        sd,
        "last_audio_self_Trans",
        a,
        None,
        audio_mask if q["mask_fusion"] else None,
        heads,
        True,
        keep_rate,
        q["renormalise"],
    )
    t = block(
        sd,
        "last_text_self_Trans",
        t,
        None,
        text_mask if q["mask_fusion"] else None,
        heads,
        True,
        keep_rate,
        q["renormalise"],
    )
    if q["masked_pooling"]:
        pooled = [
            (x * (~m)[..., None]).sum(1) / (~m).sum(1, keepdim=True) for x, m in ((a, audio_mask), (t, text_mask))
        ]
    else:
        pooled = [a.mean(dim=1), t.mean(dim=1)]
    x = torch.cat(pooled, dim=-1)
    x = torch.relu(linear(x, sd, "classifier.0"))
    x = torch.relu(linear(x, sd, "classifier.3"))
    return linear(x, sd, "classifier.6")


def module_attention_weights(mha, query, key, mask, keep_rate, renormalise=False):
    """(B, H, T, S) weights of a ksr MultiheadAttention on these inputs, computed head by head
    from its projections with this file's own softmax and key-sparse rule (no dropout)."""
    with torch.no_grad():
        if mha.is_self:
            q, k, _ = mha.project_qkv(query).chunk(3, dim=-1)
        else:
            q, k = mha.project_q(query), mha.project_k(key)
        batch, t, dim = q.shape
        hd = dim // mha.num_heads
        out = torch.zeros(batch, mha.num_heads, t, k.shape[1], dtype=q.dtype)
        for b in range(batch):
            for h in range(mha.num_heads):
                cols = slice(h * hd, (h + 1) * hd)
                scores = (q[b, :, cols] * hd**-0.5) @ k[b, :, cols].T
                if mask is not None:
                    scores[:, mask[b]] = -math.inf
                w = torch.softmax(scores, dim=-1)
                if mha.key_sparse:
                    w = w * torch.tensor(keep_columns(w.sum(dim=0), keep_rate)).to(w.dtype)
                    if renormalise:
                        w = w / w.sum(dim=-1, keepdim=True)
                out[b, h] = w
        return out
