import sys, harness as H
name = sys.argv[1]
d = H.load(H.HERE / "caches" / name)
import numpy as np
for mod in ("both", "audio", "text"):
    u = [H.probe(d, (sp := H.split(d, f, 123)).train, sp.test, mod)["ua"] for f in range(1, 6)]
    print(f"probe {mod}: {100*np.mean(u):.1f} ± {100*np.std(u, ddof=1):.1f}", flush=True)
R = lambda ep, lr=4e-3: dict(name="x", optimizer="adamw", schedule="cosine", epochs=ep, lr=lr, batch_size=16)
for label, kw in [("demo model, std input, 30 ep", dict(input_norm="standardize", recipe=R(30)))]:
    res = H.run_setup(d, H.Setup(**kw), curves=True, log=H.HERE / "log_explore.jsonl", label=f"{name}: {label}")
    print(H.fmt(res), "| train acc", [round(r["final_train_acc"], 2) for r in res["rows"]], "last", [round(r["last_ua"], 2) for r in res["rows"]], flush=True)
