import time, torch, sys, harness as H
d = H.load(H.HERE / "caches" / sys.argv[1])
s = H.Setup()
for impl in ("fast", "plain"):
    m = H.build_model(d, H.Setup(model={**s.model, "attention_impl": impl}))
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    t = time.perf_counter()
    with torch.profiler.profile() as prof:
        for i in range(0, 256, 16):
            j = torch.arange(i, i + 16)
            loss = torch.nn.functional.cross_entropy(m(d.audio[j], d.text[j], d.amask[j], d.tmask[j]), d.labels[j])
            opt.zero_grad(); loss.backward(); opt.step()
    print(impl, f"{time.perf_counter() - t:.2f} s per epoch")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
