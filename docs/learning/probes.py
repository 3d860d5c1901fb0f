"""The linear probe (standardised mean+std over true lengths, LogisticRegression) on every cache named, seed 123 splits."""
import sys, numpy as np, harness as H
for name in sys.argv[1:]:
    d = H.load(H.HERE / "caches" / name)
    row = []
    for mod in ("both", "audio", "text"):
        u = [H.probe(d, (sp := H.split(d, f, 123)).train, sp.test, mod)["ua"] for f in range(1, 6)]
        row.append(f"{mod} {100*np.mean(u):.1f} ± {100*np.std(u, ddof=1):.1f}")
    print(f"{name:<10} {tuple(d.audio.shape)} {tuple(d.text.shape)}: " + " | ".join(row), flush=True)
