"""Table C: tiny demo cache, fused, standardised input, epochs 24 (AdamW 4e-3 cosine, batch 16, make demo's
model), seed 123, with test curves so that selection by valid UA / valid loss / last epoch can be compared."""
import harness as H
d = H.load(H.HERE / "caches/demo")
R = lambda ep, lr=4e-3, bs=16: dict(name="x", optimizer="adamw", schedule="cosine", epochs=ep, lr=lr, batch_size=bs)
for label, kw in [("std input, 24 ep", dict(input_norm="standardize", recipe=R(24)))]:
    res = H.run_setup(d, H.Setup(**kw), curves=True, log=H.HERE / "log_demo_c.jsonl", label=f"both: {label}")
    print(H.fmt(res), "| train acc", [round(r["final_train_acc"], 2) for r in res["rows"]], "last", [round(r["last_ua"], 2) for r in res["rows"]], flush=True)
