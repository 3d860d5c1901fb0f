"""Does the paper recipe train? make demo's model size on the demo cache, recipes paper (SGD 5e-4,
no momentum, halved every 30 epochs) and official (SGD momentum 0.9, cosine), 120 epochs, batch 32,
classifier dropout 0.5 (as both recipes set it), seed 123, selection on validation UA; per-epoch
training loss / accuracy and test UA.

RECIPES=paper,official python study_paper.py MODALITIES FOLD...     e.g. python study_paper.py text 1 2 3 4 5 ; python study_paper.py both 1
"""
import sys
import harness as H
d = H.load(H.HERE / "caches/demo")
mod = sys.argv[1] if len(sys.argv) > 1 else "text"
folds = tuple(int(f) for f in sys.argv[2:]) or (1, 2, 3, 4, 5)
M = dict(num_layers=(1, 1, 1), num_heads=4, audio_ffn_dim=64, text_ffn_dim=64, max_positions=512,
         attention_dropout=0.0, classifier_dropout=0.5)
import os
norms = ("none", "standardize") if mod == "text" else ("none",)
wanted = os.environ.get("RECIPES", "paper,official").split(",")
for (name, rec), norm in [(x, n) for n in norms for x in [("paper", dict(name="paper")), ("official", dict(name="official", momentum=0.9, schedule="cosine"))] if x[0] in wanted]:
    res = H.run_setup(d, H.Setup(model=M, recipe=rec, modalities=mod, input_norm=norm), folds=folds, curves=True,
                      log=H.HERE / "log_paper.jsonl", label=f"{mod}: {name} recipe, 120 ep" + (", std input" if norm != "none" else ""))
    print(H.fmt(res), flush=True)
    for r in res["rows"]:
        h = r["history"]
        print(f"  fold {r['fold']} (epoch: train loss/train acc/test UA): "
              + " ".join(f"{e['epoch']}:{e['train_loss']:.3f}/{e['train_acc']:.2f}/{e['test_ua']:.2f}"
                         for e in h if e["epoch"] % 20 == 0 or e["epoch"] == len(h) - 1), flush=True)
