"""Seconds per training epoch of make demo's model on the demo cache, per attention implementation."""
import time, torch, harness as H
d = H.load(H.HERE / "caches/demo")
for impl, backend in (("fast", None), ("fast", "sdpa"), ("plain", None)):
    s = H.Setup(); m = H.build_model(d, H.Setup(model={**s.model, "attention_impl": impl}))
    if backend:
        for mod in m.modules():
            if hasattr(mod, "fast_backend"): mod.fast_backend = backend
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    idx = torch.arange(256)
    t = time.perf_counter()
    for i in range(0, 256, 16):
        j = idx[i:i + 16]
        loss = torch.nn.functional.cross_entropy(m(d.audio[j], d.text[j], d.amask[j], d.tmask[j]), d.labels[j])
        opt.zero_grad(); loss.backward(); opt.step()
    print(impl, backend, f"{time.perf_counter() - t:.2f} s per epoch of 256")
