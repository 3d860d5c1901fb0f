"""Seconds per training epoch (256 utterances) of make demo's model on the demo cache vs batch size."""
import time, torch, sys, harness as H
d = H.load(H.HERE / (sys.argv[1] if len(sys.argv) > 1 else "caches/demo"))
for bs in (16, 32, 64):
    m = H.build_model(d, H.Setup())
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    t = time.perf_counter()
    for i in range(0, 256, bs):
        j = torch.arange(i, i + bs)
        loss = torch.nn.functional.cross_entropy(m(d.audio[j], d.text[j], d.amask[j], d.tmask[j]), d.labels[j])
        opt.zero_grad(); loss.backward(); opt.step()
    print(f"batch {bs}: {time.perf_counter() - t:.2f} s per epoch", flush=True)
