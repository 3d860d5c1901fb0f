"""Selection variants from logged test curves: valid UA (ksr's rule, earliest best), valid loss, last epoch, oracle."""
import json, sys, numpy as np
for f in sys.argv[1:]:
    for l in open(f):
        r = json.loads(l)
        if "history" not in r["rows"][0] or "test_ua" not in r["rows"][0]["history"][0]:
            continue
        out = {"valid UA": [], "valid loss": [], "last": [], "oracle": []}
        for x in r["rows"]:
            h = x["history"]
            out["valid UA"].append(x["ua"])
            if "valid_loss" in h[0]:
                out["valid loss"].append(min(h, key=lambda e: e["valid_loss"])["test_ua"])
            out["last"].append(h[-1]["test_ua"])
            out["oracle"].append(max(e["test_ua"] for e in h))
        print(f"{r['label']:<50} " + "  ".join(f"{k} {100*np.mean(v):5.1f}" for k, v in out.items() if v))
