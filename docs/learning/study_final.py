"""Final tables: one setup, fused / audio only / text only, seeds x 5 folds, probe beside every row.

python study_final.py CACHE SETUP SEEDS MODALITIES
  SETUP: demo (make demo as it is), ksr-demo (the recommended demo recipe), ...  (see SETUPS)
  e.g. python study_final.py demo ksr-demo 1,2,3 both,audio,text
"""
import sys, harness as H

R = lambda ep, lr=4e-3, bs=16, **kw: dict(name="x", optimizer="adamw", schedule="cosine", epochs=ep, lr=lr, batch_size=bs, **kw)
DEMO_MODEL = H.Setup().model
SETUPS = {
    "demo": H.Setup(),  # make demo today: no input normalisation, 12 epochs
    "demo-std": H.Setup(input_norm="standardize"),
    "ksr-24": H.Setup(input_norm="standardize", recipe=R(24), warmup_steps=16),
    "ksr-30": H.Setup(input_norm="standardize", recipe=R(30), warmup_steps=16),
    "ksr-16": H.Setup(input_norm="standardize", recipe=R(16), warmup_steps=16),
    "paper": H.Setup(model={**DEMO_MODEL, "classifier_dropout": 0.5}, recipe=dict(name="paper")),
    "official": H.Setup(model={**DEMO_MODEL, "classifier_dropout": 0.5}, recipe=dict(name="official", momentum=0.9, schedule="cosine")),
}
cache, setup = sys.argv[1], sys.argv[2]
frames = None
if "@" in cache:  # e.g. demo@115: the demo cache with audio cut to its first 115 frames
    cache, frames = cache.split("@")[0], int(cache.split("@")[1])
seeds = tuple(int(s) for s in (sys.argv[3] if len(sys.argv) > 3 else "123").split(","))
mods = (sys.argv[4] if len(sys.argv) > 4 else "both,audio,text").split(",")
folds = tuple(int(f) for f in sys.argv[5].split(",")) if len(sys.argv) > 5 else (1, 2, 3, 4, 5)
d = H.load(H.HERE / "caches" / cache, audio_frames=frames)
for mod in mods:
    s = H.Setup(**{**H.asdict(SETUPS[setup]), "modalities": mod})
    res = H.run_setup(d, s, seeds=seeds, folds=folds, curves=True, log=H.HERE / "log_final.jsonl", label=f"{cache}{'@' + str(frames) if frames else ''} {setup} {mod}")
    print(H.fmt(res), flush=True)
