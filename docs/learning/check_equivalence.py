"""The harness's loop against ksr's own train_fold: same settings, fold 1, seed 123.

Trains fold 1 with ksr.fuse.train.train_fold (make demo's model and recipe, selection on
validation WA as ksr does) and with harness.run_fold (select on valid WA), and prints the
per-epoch training losses of both: they must agree to float rounding.
"""
import json, tempfile
from pathlib import Path
import numpy as np, torch
import harness as H
from ksr.cache import open_cache
from ksr.fuse.model.config import ModelConfig
from ksr.fuse.train.recipes import Recipe
from ksr.fuse.train import RunSpec, train_fold, model_config_for_cache

setup = H.Setup(metric="wa")
cache = open_cache(H.HERE / "caches/demo", progress=False)
spec = RunSpec(model=model_config_for_cache(cache, ModelConfig(**setup.model)), recipe=Recipe(**setup.recipe),
               cache_meta=cache.meta.to_dict())
with tempfile.TemporaryDirectory() as d:
    train_fold(cache, spec, Path(d), 1, 123, torch.device("cpu"), progress=False)
    ksr_hist = json.loads((Path(d) / "seed123/fold1/history.json").read_text())
mine = H.run_fold(H.load(H.HERE / "caches/demo"), setup, 1, 123)
for a, b in zip(ksr_hist["epochs"], mine["history"]):
    print(f"epoch {a['epoch']:2d}: ksr train_loss {a['train_loss']:.6f} valid_wa {a['valid_wa']:.4f} | "
          f"harness {b['train_loss']:.6f} {b['valid_wa']:.4f}")
print("ksr best", ksr_hist["best"], "harness best epoch", mine["best_epoch"])
