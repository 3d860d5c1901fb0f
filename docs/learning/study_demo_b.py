"""Table B: the tiny-encoder demo cache (caches/demo, 230 frames), fused model, make demo's
model and recipe (AdamW 4e-3 cosine, batch 16, 12 epochs), one factor at a time; seed 123."""
import harness as H
d = H.load(H.HERE / "caches/demo")
base = H.Setup().model
Q = dict(pooling="masked", mask_fusion=True, mask_interaction_self=True)
for label, kw in [
    ("+ standardised input", dict(input_norm="standardize")),
    ("+ masked pooling/masks (quirks off)", dict(model={**base, **Q})),
    ("+ standardised input + quirks off", dict(input_norm="standardize", model={**base, **Q})),
]:
    res = H.run_setup(d, H.Setup(**kw), curves=True, log=H.HERE / "log_demo_b.jsonl", label=f"both: {label}")
    print(H.fmt(res), "| train acc", [round(r["final_train_acc"], 2) for r in res["rows"]], "last", [round(r["last_ua"], 2) for r in res["rows"]], flush=True)
