import sys, harness as H
d = H.load(H.HERE / "caches/demo")
import json
for label, kw in [
    ("text demo 12ep", {}),
    ("text demo 12ep std-input", dict(input_norm="standardize")),
    ("text 40ep", dict(recipe=dict(name="x", optimizer="adamw", schedule="cosine", epochs=40, lr=4e-3, batch_size=16))),
    ("text 40ep std-input", dict(input_norm="standardize", recipe=dict(name="x", optimizer="adamw", schedule="cosine", epochs=40, lr=4e-3, batch_size=16))),
]:
    s = H.Setup(modalities="text", **kw)
    res = H.run_setup(d, s, curves=True, log=H.HERE / "log_explore.jsonl", label=label)
    print(H.fmt(res), "train acc", [round(r["final_train_acc"], 2) for r in res["rows"]], "best ep", [r["best_epoch"] for r in res["rows"]], "last", [round(r["last_ua"], 2) for r in res["rows"]], flush=True)
