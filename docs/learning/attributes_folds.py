"""Test scores of every finished fold of the attribute study's runs (study_attributes.sh), beside the
ridge baseline on the same fold: UA, and the CCC per attribute and their mean. Reads the runs while
they train (a fold counts once its 28 epochs are done), so a partial study can be reported as such.

python attributes_folds.py CACHE RUN [RUN ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ksr.cache import open_cache
from ksr.fuse.train.attributes import epoch_scores, true_attributes
from ksr.fuse.train.checkpoint import load_model
from ksr.fuse.train.inference import infer
from ksr.fuse.train.metrics import attribute_scores
from ksr.fuse.train.ridge import fit_ridge, ridge_features
from ksr.fuse.train.runs import cache_split, fold_files, load_run


def main(cache_dir: str, runs: list[str]) -> None:
    cache = open_cache(cache_dir, progress=False)
    features = None
    print("| seed | fold | UA | mean CCC | activation | valence | dominance | ridge mean CCC | ridge a / v / d |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in map(Path, runs):
        spec = load_run(run)
        features = ridge_features(cache, spec.model) if features is None else features
        for seed in json.loads((run / "run.json").read_text())["seeds"]:
            for fold in range(1, 6):
                files = fold_files(run, seed, fold)
                if not files.history.is_file() or len(json.loads(files.history.read_text())["epochs"]) < 28:
                    continue
                split = cache_split(cache, spec, fold, seed)
                out = infer(load_model(files.best), cache, split.test, 64, torch.device("cpu"))
                s = epoch_scores(cache, split.test, out, spec.model)
                ridge = fit_ridge(features, cache, split.train, split.valid, spec.model)
                r = attribute_scores(
                    true_attributes(cache, split.test, spec.model),
                    ridge.predict(features[split.test]),
                    spec.model.attributes,
                )
                names = spec.model.attributes
                print(
                    f"| {seed} | {fold} | {100 * s['ua']:.2f} | {s['ccc']:.3f} | "
                    + " | ".join(f"{s[f'ccc_{n}']:.3f}" for n in names)
                    + f" | {r['ccc']:.3f} | "
                    + " / ".join(f"{r[f'ccc_{n}']:.3f}" for n in names)
                    + " |"
                )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
