"""Table A: make demo's settings on the demo cache (230 frames), one factor at a time: input
standardisation and epochs; fused, audio only, text only; seed 123; probe beside every row."""
import harness as H
d = H.load(H.HERE / "caches/demo")
R = lambda ep: dict(name="demo", optimizer="adamw", schedule="cosine", epochs=ep, lr=4e-3, batch_size=16)
for mod in ("both", "audio", "text"):
    for label, kw in [("demo (12 ep)", {}), ("demo + standardised input", dict(input_norm="standardize")),
                      ("demo, 40 ep", dict(recipe=R(40))),
                      ("demo + standardised input, 40 ep", dict(input_norm="standardize", recipe=R(40)))]:
        res = H.run_setup(d, H.Setup(modalities=mod, **kw), curves=True, log=H.HERE / "log_demo_a.jsonl", label=f"{mod}: {label}")
        print(H.fmt(res), "| train acc", [round(r["final_train_acc"], 2) for r in res["rows"]], flush=True)
