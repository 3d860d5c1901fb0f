"""The worktree patch (ModelConfig.input_norm + Recipe 'ksr' with warm-up, in ksr.fuse.train.train_fold) against the
harness (normalisation outside the model, warm-up of the same number of steps): fold 1, seed 123, 3 epochs."""
import json, math, tempfile
from pathlib import Path
import torch, harness as H
from ksr.cache import open_cache
from ksr.fuse.model.config import ModelConfig
from ksr.fuse.train.recipes import recipe
from ksr.fuse.train import RunSpec, train_fold, model_config_for_cache

r = recipe("ksr", epochs=3)
cache = open_cache(H.HERE / "caches/demo", progress=False)
model = model_config_for_cache(cache, ModelConfig(**H.Setup().model), input_norm=r.input_norm, classifier_dropout=r.classifier_dropout)
spec = RunSpec(model=model, recipe=r, cache_meta=cache.meta.to_dict(), metric="ua")
with tempfile.TemporaryDirectory() as d:
    train_fold(cache, spec, Path(d), 1, 123, torch.device("cpu"), progress=False)
    ksr_hist = json.loads((Path(d) / "seed123/fold1/history.json").read_text())
sp = H.split(H.load(H.HERE / "caches/demo"), 1, 123)
warm = math.ceil(len(sp.train) / r.batch_size)
s = H.Setup(input_norm="standardize", warmup_steps=warm,
            recipe=dict(name="x", optimizer="adamw", schedule="cosine", epochs=3, lr=r.lr, batch_size=r.batch_size))
mine = H.run_fold(H.load(H.HERE / "caches/demo"), s, 1, 123)
for a, b in zip(ksr_hist["epochs"], mine["history"]):
    print(f"epoch {a['epoch']}: patched train_fold loss {a['train_loss']:.6f} valid UA {a['valid_ua']:.4f} | harness {b['train_loss']:.6f} {b['valid_ua']:.4f}")
