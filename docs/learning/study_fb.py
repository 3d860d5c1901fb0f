"""Table D: real front ends (caches/fb4t12: 80 log-mel pooled x4 = 25 frames/s, 110 frames; MiniLM tokens, 12),
make demo's model, standardised input, AdamW cosine, batch 16; seed 123; curves for selection variants.
python study_fb.py CACHE EPOCHS [LR]"""
import sys, harness as H
name = sys.argv[1] if len(sys.argv) > 1 else "fb4t12"
ep = int(sys.argv[2]) if len(sys.argv) > 2 else 20
lr = float(sys.argv[3]) if len(sys.argv) > 3 else 4e-3
d = H.load(H.HERE / "caches" / name)
R = dict(name="x", optimizer="adamw", schedule="cosine", epochs=ep, lr=lr, batch_size=16)
for mod in sys.argv[4:] or ["both"]:
    res = H.run_setup(d, H.Setup(input_norm="standardize", recipe=R, modalities=mod), curves=True,
                      log=H.HERE / "log_fb.jsonl", label=f"{name} {mod}: std input, {ep} ep, lr {lr:g}")
    print(H.fmt(res), "| train acc", [round(r["final_train_acc"], 2) for r in res["rows"]], "last", [round(r["last_ua"], 2) for r in res["rows"]], flush=True)
