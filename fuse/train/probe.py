"""The linear-probe baseline's fitting: pooled statistics into scikit-learn's logistic regression.

The probe itself is a torch module (``ksr.fuse.model.baselines.PoolingProbe``) so checkpoints,
reports and ``ksr predict`` treat it like any model; this module fits it, one regularisation
strength per "epoch", the one that scores best on the selection set kept.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from ...cache import Cache
from ...common import Ranks, write_json
from ..model.architectures import build_model
from ..model.baselines import PoolingProbe
from .checkpoint import save_checkpoint
from .folds import Split
from .inference import infer
from .losses import is_class_weighted
from .metrics import METRICS, scores
from .runs import FoldFiles, FoldOutcome, RunError, RunSpec, checkpoint_meta, measured_on

#: Inverse regularisation strengths the probe tries; validation picks one.
PROBE_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)


@torch.no_grad()
def pooled_features(model: PoolingProbe, cache, indices: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(N, width) float64 pooled statistics of the cache utterances ``indices``."""
    rows = [
        model.pooled(b.audio, b.text, b.audio_padding_mask, b.text_padding_mask).double().cpu().numpy()
        for b in cache.loader(indices, batch_size=batch_size)
    ]
    return np.concatenate(rows) if rows else np.zeros((0, model.mean.numel()))


def fit_probe(
    model: PoolingProbe,
    features: np.ndarray,
    labels: np.ndarray,
    c: float,
    seed: int,
    class_weight: str | None = None,
) -> PoolingProbe:
    """Fit the standardisation and a multinomial logistic regression (L2, strength 1/C) in place;
    ``class_weight="balanced"`` weights each utterance by its class's inverse frequency."""
    from sklearn.linear_model import LogisticRegression

    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0  # a constant feature, as scikit-learn's StandardScaler leaves it
    fitted = LogisticRegression(C=c, max_iter=5000, random_state=seed, class_weight=class_weight).fit(
        (features - mean) / scale, labels
    )
    weight = np.zeros((model.cfg.num_classes, features.shape[1]))
    bias = np.full(model.cfg.num_classes, -1e9)  # a class absent from training is never predicted
    weight[fitted.classes_] = (
        fitted.coef_ if len(fitted.classes_) > 2 else np.stack([-fitted.coef_[0], fitted.coef_[0]]) / 2
    )
    bias[fitted.classes_] = (
        fitted.intercept_ if len(fitted.classes_) > 2 else np.array([-fitted.intercept_[0], fitted.intercept_[0]]) / 2
    )
    model.mean.copy_(torch.from_numpy(mean))
    model.scale.copy_(torch.from_numpy(scale))
    model.linear.weight.data.copy_(torch.from_numpy(weight))
    model.linear.bias.data.copy_(torch.from_numpy(bias))
    return model


def probe_class_weight(spec: RunSpec) -> str | None:
    """scikit-learn's ``class_weight`` for the probe's loss: ``ce`` or ``weighted-ce`` (its
    logistic regression has no focal loss and no batches to balance)."""
    r = spec.recipe
    if r.loss not in ("ce", "weighted-ce") or r.sampler != "shuffle":
        raise RunError(
            f"the linear probe fits a logistic regression: --loss ce or weighted-ce and --sampler shuffle, "
            f"not --loss {r.loss} --sampler {r.sampler}"
        )
    return "balanced" if is_class_weighted(r.loss) else None


def fit_probe_fold(
    cache: Cache,
    spec: RunSpec,
    files: FoldFiles,
    split: Split,
    selection: np.ndarray,
    fold: int,
    seed: int,
    device: torch.device,
    ranks: Ranks,
) -> FoldOutcome:
    """The probe baseline's "training": one scikit-learn fit per C of ``PROBE_C_GRID`` on the
    training utterances, the C whose model scores best on the selection set kept (as an epoch
    would be). Each C is recorded in history.json as one "epoch"; best.pt holds the chosen one."""
    began = time.perf_counter()
    if files.best.exists() and files.history.exists():
        history = json.loads(files.history.read_text())
        return FoldOutcome(fold, seed, history["best"]["epoch"], history["best"]["value"], len(history["epochs"]), 0.0)
    class_weight = probe_class_weight(spec)
    model = build_model(spec.model).to(device)
    features = pooled_features(model, cache, split.train)
    labels = cache.labels[split.train]
    history, best = [], {"epoch": -1, "value": -1.0}
    on = measured_on(spec)
    for epoch, c in enumerate(PROBE_C_GRID):
        fit_probe(model, features, labels, c, seed, class_weight)
        selected = infer(model, cache, selection, 256, device)
        sel = scores(cache.labels[selection], selected.preds, spec.model.num_classes)
        train_loss = infer(model, cache, split.train, 256, device).loss
        history.append(
            {
                "epoch": epoch,
                "C": c,
                "train_loss": train_loss,
                f"{on}_loss": selected.loss,
                **{f"{on}_{m}": sel[m] for m in METRICS},
            }
        )
        if sel[spec.metric] > best["value"]:
            best = {"epoch": epoch, "value": sel[spec.metric]}
            if ranks.main:
                meta = checkpoint_meta(spec, split, fold, seed, epoch)
                save_checkpoint(files.best, model, {**meta, "C": c, "value": sel[spec.metric]})
    if ranks.main:
        save_checkpoint(
            files.last,
            model,
            {"fold": fold, "seed": seed, "epoch": len(history) - 1, "cache_meta": spec.cache_meta},
        )
        write_json(files.history, {"best": best, "epochs": history})  # written last: the fold is done
    return FoldOutcome(fold, seed, best["epoch"], best["value"], len(history), time.perf_counter() - began)
