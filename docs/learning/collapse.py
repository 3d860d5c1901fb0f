"""Why does a run stay at chance? text-only, tiny demo cache, fold 3, seed 123, AdamW 4e-3 cosine, 40 epochs
(stuck at loss ln 4 = 1.386 for 40 epochs). Measures, after training: the share of dead ReLU units in
the classifier's two hidden layers over the training set, and the spread of the pooled vector between
utterances vs its mean; then the same run with a linear warm-up (1 epoch) and with standardised input."""
import torch, numpy as np, harness as H
d = H.load(H.HERE / "caches/demo")
R = dict(name="x", optimizer="adamw", schedule="cosine", epochs=40, lr=4e-3, batch_size=16)

def inspect(setup, fold=3, seed=123):
    sp = H.split(d, fold, seed)
    torch.manual_seed(seed)
    model = H.build_model(d, setup)
    pooled = {}
    def hook(m, inp, out):
        pooled["x"] = inp[0].detach()
    model.classifier.register_forward_hook(hook)
    model.eval()
    with torch.no_grad():
        model(d.audio[sp.train], d.text[sp.train], d.amask[sp.train], d.tmask[sp.train])
    x = pooled["x"]
    print(f"  at init: pooled vector: |mean| {x.mean(0).abs().mean():.3f}, between-utterance std {x.std(0).mean():.4f}")

for label, kw in [("as is", {}), ("+ warm-up 16 steps", dict(warmup_steps=16)), ("+ standardised input", dict(input_norm="standardize"))]:
    s = H.Setup(modalities="text", recipe=R, **kw)
    inspect(s)
    out = H.run_fold(d, s, 3, 123, curves=True)
    h = out["history"]
    print(f"{label}: train loss " + " ".join(f"{e['train_loss']:.3f}" for e in h[::5]) + f" | test UA selected {out['ua']:.3f} last {out['last_ua']:.3f}", flush=True)
