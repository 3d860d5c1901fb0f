"""Dead classifier units after the stuck run (text-only, demo cache, fold 3, AdamW 4e-3 cosine 40 epochs)."""
import torch, harness as H
d = H.load(H.HERE / "caches/demo")
R = dict(name="x", optimizer="adamw", schedule="cosine", epochs=40, lr=4e-3, batch_size=16)
import harness
orig = harness.run_fold
s = H.Setup(modalities="text", recipe=R, select="last")
# train, then look at the classifier's hidden activations on the training set
sp = H.split(d, 3, 123)
captured = {}
real_build = H.build_model
def build(data, setup):
    m = real_build(data, setup); captured["m"] = m; return m
H.build_model = build
out = H.run_fold(d, s, 3, 123)
m = captured["m"].eval()
acts = []
hooks = [m.classifier[i].register_forward_hook(lambda mod, i, o: acts.append(o.detach())) for i in (1, 4)]
with torch.no_grad():
    logits = m(d.audio[sp.train], d.text[sp.train], d.amask[sp.train], d.tmask[sp.train])
for name, a in zip(("hidden 1 (ReLU)", "hidden 2 (ReLU)"), acts):
    dead = (a.max(0).values <= 0).float().mean()
    print(f"{name}: {a.shape[1]} units, {100 * dead:.0f}% never active on the training set")
print("logits spread between utterances:", logits.std(0))
