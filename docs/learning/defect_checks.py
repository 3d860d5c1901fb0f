"""Minimal checks of the suspected defects in ksr's training path (each prints PASS/FAIL and what it measured).

python defect_checks.py
"""
import math, numpy as np, torch
import harness as H
from ksr.cache import open_cache
from ksr.fuse import quirks
from ksr.fuse.train.recipes import Recipe, build_optimizer, build_scheduler

d = H.load(H.HERE / "caches/demo")
cache = open_cache(H.HERE / "caches/demo", progress=False)

def report(name, ok, detail):
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")

# 1. padding mask direction: True = padded, and the unimodal encoder ignores padded keys
b = cache.batch(np.arange(8))
ok = bool(((~b.audio_padding_mask).sum(1) == b.audio_lengths).all() and ((~b.text_padding_mask).sum(1) == b.text_lengths).all())
report("masks: True marks padding, count of False = true length", ok, f"lengths {b.audio_lengths[:4].tolist()}")
torch.manual_seed(0)
model = H.build_model(d, H.Setup()).eval()
i = int(torch.argmin(b.audio_lengths)); L = int(b.audio_lengths[i])
x = b.audio[i:i + 1].clone(); m = b.audio_padding_mask[i:i + 1]
with torch.no_grad():
    y1 = model.audio_encoder(x, key_padding_mask=m)
    x2 = x.clone(); x2[:, L:] = torch.randn_like(x2[:, L:]) * 5
    y2 = model.audio_encoder(x2, key_padding_mask=m)
diff = (y1[:, :L] - y2[:, :L]).abs().max().item()
report("unimodal encoder: true positions do not see padded frames", diff < 1e-5, f"max change {diff:.2e} when padding is replaced by noise")

# 2. dropout off at evaluation: two eval forwards agree; train forwards differ
with torch.no_grad():
    a = model(b.audio, b.text, b.audio_padding_mask, b.text_padding_mask)
    c = model(b.audio, b.text, b.audio_padding_mask, b.text_padding_mask)
    model.train(); t1 = model(b.audio, b.text, b.audio_padding_mask, b.text_padding_mask); model.eval()
report("eval mode is deterministic (dropout off)", torch.equal(a, c) and not torch.equal(a, t1), f"eval diff {(a - c).abs().max():.1e}, train diff {(a - t1).abs().max():.2e}")

# 3. schedule stepped per epoch as Recipe.lr_at says
for r in (Recipe(name="paper"), Recipe(name="official", momentum=0.9, schedule="cosine")):
    opt = build_optimizer(model.parameters(), r); sch = build_scheduler(opt, r); seen = []
    for e in range(r.epochs):
        seen.append(opt.param_groups[0]["lr"]); opt.step(); sch.step()
    err = max(abs(s - r.lr_at(e)) for e, s in enumerate(seen))
    report(f"{r.name} schedule per epoch = lr_at(epoch)", err < 1e-12, f"max |lr - lr_at| {err:.1e}; lr epoch 0/30/60/119 = {[seen[k] for k in (0, 30, 60, 119)]}")

# 4. labels stay with their features through a shuffled batch
perm = np.random.default_rng(0).permutation(len(cache))[:32]
bb = cache.batch(perm)
ok = all(cache.labels[p] == bb.labels[k].item() and cache.ids[p] == bb.ids[k] for k, p in enumerate(perm))
same = torch.equal(bb.audio[5], cache.batch([perm[5]]).audio[0])
report("shuffled batch: labels, ids and features stay aligned", ok and same, "32 random utterances")

# 5. the classifier sees concat(pool(audio), pool(text)) of the fusion outputs
seen = {}
h = model.classifier.register_forward_hook(lambda mod, inp, out: seen.setdefault("x", inp[0]))
with torch.no_grad():
    model(b.audio, b.text, b.audio_padding_mask, b.text_padding_mask)
    aa = model.audio_encoder(b.audio, key_padding_mask=b.audio_padding_mask); tt = model.text_encoder(b.text, key_padding_mask=b.text_padding_mask)
    ai = model.audio_ccabs(aa, tt, b.text_padding_mask, b.audio_padding_mask); ti = model.text_ccabs(tt, aa, b.audio_padding_mask, b.text_padding_mask)
    af = model.audio_fusion(quirks.merge_interaction(aa, ai, model.cfg)); tf = model.text_fusion(quirks.merge_interaction(tt, ti, model.cfg))
    want = torch.cat([af.mean(1), tf.mean(1)], -1)
h.remove()
report("classifier input = [mean(audio fusion), mean(text fusion)]", torch.allclose(seen["x"], want, atol=1e-6), f"max diff {(seen['x'] - want).abs().max():.1e}")

# 6. feature scale: the per-dim offsets shared by all utterances vs the between-utterance signal
for name, x, m in (("audio", d.audio, d.amask), ("text", d.text, d.tmask)):
    keep = (~m).float()[..., None]
    um = (x * keep).sum(1) / keep.sum(1)
    off, sig = um.mean(0).abs().mean().item(), um.std(0).mean().item()
    ln = torch.nn.functional.layer_norm(x[~m], (x.shape[-1],))
    prof = ln.mean(0)
    share = (prof.pow(2).sum() / ln.pow(2).sum(1).mean()).item()
    report(f"{name} input normalised per dimension", off < sig,
           f"mean |per-dim offset| {off:.3f} vs between-utterance std of utterance means {sig:.3f} (ratio {off / sig:.1f}); "
           f"after the model's per-frame LayerNorm the shared profile is still {100 * share:.0f}% of each frame's energy")
