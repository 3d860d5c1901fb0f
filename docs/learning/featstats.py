"""Feature scales of the demo cache: what the model's input LayerNorm sees vs what the probe sees."""
import os
os.environ.setdefault("OMP_NUM_THREADS", "1")
import sys, numpy as np, torch
torch.set_num_threads(1)
from ksr.cache import open_cache
root = sys.argv[1] if len(sys.argv) > 1 else "caches/demo"
c = open_cache(root, progress=False)
b = c.batch(np.arange(len(c)))
for name, x, m, L in (("audio", b.audio, b.audio_padding_mask, b.audio_lengths), ("text", b.text, b.text_padding_mask, b.text_lengths)):
    v = x[~m]  # true frames only
    mu, sd = v.mean(0), v.std(0)
    print(f"{name}: shape {tuple(x.shape)}, lengths min/mean/max {L.min().item()}/{L.float().mean():.1f}/{L.max().item()}; "
          f"padding share {m.float().mean():.2f}")
    print(f"  per-dim mean: min {mu.min():.3f} max {mu.max():.3f} |mean| avg {mu.abs().mean():.3f}")
    print(f"  per-dim std (over frames): min {sd.min():.4f} max {sd.max():.4f} median {sd.median():.4f}")
    # per-utterance mean feature: between-utterance std per dim
    um = (x * (~m)[..., None]).sum(1) / L[:, None]
    bsd = um.std(0)
    print(f"  between-utterance std of the utterance mean, per dim: min {bsd.min():.4f} max {bsd.max():.4f} median {bsd.median():.4f}")
    print(f"  ratio between-utterance std / within-frame std, median {(bsd / sd).median():.3f}")
    # what per-frame LayerNorm keeps: frame norm after removing frame mean
    fm = v.mean(1, keepdim=True); fs = v.std(1)
    print(f"  per-frame mean across dims: avg {fm.mean():.3f} std {fm.std():.3f}; per-frame std across dims avg {fs.mean():.3f} std {fs.std():.3f}")
    # dims dominating frame-LN: share of frame variance from the fixed per-dim mean profile
    prof = mu - mu.mean()
    print(f"  share of per-frame (across-dim) variance explained by the constant per-dim mean profile: "
          f"{(prof ** 2).mean() / ((v - v.mean(1, keepdim=True)) ** 2).mean():.3f}")
    # are padded positions zero?
    print(f"  padded positions: max |x| {x[m].abs().max() if m.any() else 0:.3g}")
