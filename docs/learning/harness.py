"""The learning study's harness: ksr's model, folds and metrics, with a training loop that
reproduces ``ksr.fuse.train.train_fold`` (same seed -> same initial weights, same shuffles, same
optimiser and per-epoch scheduler; checked by ``check_equivalence.py``) and adds the factors under
study (input normalisation, warm-up, per-step schedules, pooled-vector normalisation).

Nothing is written to disk per epoch (train_fold writes three checkpoints per epoch); the
selected epoch's weights are kept in memory. Everything runs on one CPU thread.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass, field, asdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

torch.set_num_threads(1)

from ksr.cache import open_cache
from ksr.fuse.model.config import ModelConfig
from ksr.fuse.train.folds import make_split
from ksr.fuse.train.metrics import scores
from ksr.fuse.model.model import KSTransformer
from ksr.fuse.train.recipes import Recipe, build_optimizer, build_scheduler

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------
@dataclass
class Data:
    audio: torch.Tensor
    text: torch.Tensor
    amask: torch.Tensor  # True = padded
    tmask: torch.Tensor
    alen: torch.Tensor
    tlen: torch.Tensor
    labels: torch.Tensor
    sessions: np.ndarray
    speakers: np.ndarray
    classes: tuple
    name: str = ""

    def __len__(self):
        return len(self.labels)


def load(cache_dir: str | Path, audio_frames: int | None = None) -> Data:
    c = open_cache(cache_dir, progress=False)
    b = c.batch(np.arange(len(c)))
    audio, amask, alen = b.audio, b.audio_padding_mask, b.audio_lengths
    if audio_frames is not None and audio_frames < audio.shape[1]:
        audio, amask = audio[:, :audio_frames].contiguous(), amask[:, :audio_frames].contiguous()
        alen = alen.clamp(max=audio_frames)
    return Data(audio, b.text, amask, b.text_padding_mask, alen, b.text_lengths, b.labels.long(),
                np.asarray(c.sessions), np.asarray(c.speakers), tuple(c.classes), str(cache_dir))


def split(data: Data, fold: int, seed: int, val_fraction: float = 0.1):
    """ksr's own split (fuse.folds.make_split), exactly as train_fold draws it."""
    return make_split("session", fold, data.sessions, data.speakers, data.labels.numpy(),
                      val_fraction=val_fraction, seed=seed)


# --- the linear probe --------------------------------------------------------------------------
def pooled_stats(x: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """mean and std over the true frames of each utterance -> (N, 2D)."""
    keep = (~mask).float()[..., None]
    n = keep.sum(1).clamp_min(1)
    mu = (x * keep).sum(1) / n
    var = (((x - mu[:, None]) ** 2) * keep).sum(1) / n
    return torch.cat([mu, var.sqrt()], -1).numpy().astype(np.float64)


def probe(data: Data, train_idx, test_idx, modalities: str = "both", C: float = 1.0) -> dict:
    """Standardised mean+std pooling over true lengths, multinomial logistic regression (sklearn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    parts = []
    if modalities in ("both", "audio"):
        parts.append(pooled_stats(data.audio, data.amask))
    if modalities in ("both", "text"):
        parts.append(pooled_stats(data.text, data.tmask))
    X = np.concatenate(parts, 1)
    y = data.labels.numpy()
    sc = StandardScaler().fit(X[train_idx])
    clf = LogisticRegression(C=C, max_iter=5000).fit(sc.transform(X[train_idx]), y[train_idx])
    pred = clf.predict(sc.transform(X[test_idx]))
    return scores(y[test_idx], pred, len(data.classes))


# --- the model under study ---------------------------------------------------------------------
@dataclass
class Setup:
    """Everything one training run needs beyond the data; defaults = `make demo`'s settings."""

    model: dict = field(default_factory=lambda: dict(num_layers=(1, 1, 1), num_heads=4, audio_ffn_dim=64,
                                                     text_ffn_dim=64, max_positions=512, attention_dropout=0.0,
                                                     classifier_dropout=0.2))
    recipe: dict = field(default_factory=lambda: dict(name="official", momentum=0.9, schedule="cosine",
                                                      optimizer="adamw", epochs=12, lr=4e-3, batch_size=16))
    modalities: str = "both"
    input_norm: str = "none"  # "none" | "standardize": per-dim z-score with training-fold stats (true frames)
    pooled_norm: bool = False  # standardise the pooled vector (BatchNorm1d, no affine) before the classifier
    warmup_steps: int = 0  # linear warm-up, per optimisation step
    per_step: bool = False  # the recipe's schedule evaluated per step (fractional epoch) instead of per epoch
    select: str = "valid"  # "valid" | "last"
    metric: str = "ua"  # "ua" | "wa" | "loss" (lowest validation cross-entropy)
    grad_clip: float = 0.0
    label_smoothing: float = 0.0

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=list)


class PooledNorm(nn.Module):
    def __init__(self, classifier: nn.Module, width: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(width, affine=False)
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(self.norm(x))


def build_model(data: Data, setup: Setup) -> KSTransformer:
    cfg = ModelConfig(**{**setup.model, "audio_dim": data.audio.shape[-1], "text_dim": data.text.shape[-1],
                         "num_classes": len(data.classes), "modalities": setup.modalities})
    model = KSTransformer(cfg)
    if setup.pooled_norm:
        width = cfg.audio_dim * (setup.modalities in ("both", "audio")) + cfg.text_dim * (setup.modalities in ("both", "text"))
        model.classifier = PooledNorm(model.classifier, width)
    return model


def standardizer(x: torch.Tensor, mask: torch.Tensor, idx: np.ndarray):
    v = x[idx][~mask[idx]]
    return v.mean(0), v.std(0).clamp_min(1e-5)


def run_fold(data: Data, setup: Setup, fold: int, seed: int, curves: bool = False) -> dict:
    """Train one fold as ksr's train_fold does (plus the study's factors); returns test scores."""
    sp = split(data, fold, seed)
    r = Recipe(**setup.recipe)
    audio, text = data.audio, data.text
    if setup.input_norm == "standardize":
        ma, sa = standardizer(audio, data.amask, sp.train)
        mt, st = standardizer(text, data.tmask, sp.train)
        audio = ((audio - ma) / sa).masked_fill(data.amask[..., None], 0.0)
        text = ((text - mt) / st).masked_fill(data.tmask[..., None], 0.0)
    elif setup.input_norm != "none":
        raise ValueError(setup.input_norm)

    def forward(model, idx):
        return model(audio[idx], text[idx], data.amask[idx], data.tmask[idx])

    torch.manual_seed(seed)
    model = build_model(data, setup)
    optimizer = build_optimizer(model.parameters(), r)
    scheduler = build_scheduler(optimizer, r)
    shuffle = torch.Generator().manual_seed(seed * 1000 + fold)
    steps_per_epoch = math.ceil(len(sp.train) / r.batch_size)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    history, best, best_state = [], {"epoch": -1, "value": -1.0}, None
    step = 0
    began, cpu_began = time.perf_counter(), time.process_time()

    def evaluate(idx):
        model.eval()
        with torch.no_grad():
            logits = torch.cat([forward(model, idx[i:i + 64]) for i in range(0, len(idx), 64)])
        out = scores(data.labels[idx].numpy(), logits.argmax(-1).numpy(), len(data.classes))
        out["loss"] = F.cross_entropy(logits, data.labels[idx]).item()
        return out

    for epoch in range(r.epochs):
        model.train()
        order = sp.train[torch.randperm(len(sp.train), generator=shuffle).numpy()]
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(0, len(order), r.batch_size):
            part = order[i:i + r.batch_size]
            lr_factor = 1.0
            if setup.per_step:
                lr_factor = lr_at_fraction(r, epoch + (i // r.batch_size) / steps_per_epoch) / r.lr
            if setup.warmup_steps and step < setup.warmup_steps:
                lr_factor *= (step + 1) / setup.warmup_steps
            if setup.per_step or setup.warmup_steps:
                epoch_factor = 1.0 if setup.per_step else scheduler.get_last_lr()[0] / r.lr
                for g, b in zip(optimizer.param_groups, base_lrs):
                    g["lr"] = b * lr_factor * epoch_factor
            logits = forward(model, part)
            y = data.labels[part]
            loss = F.cross_entropy(logits.float(), y, label_smoothing=setup.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if setup.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), setup.grad_clip)
            optimizer.step()
            step += 1
            loss_sum += loss.item() * len(part)
            correct += (logits.argmax(-1) == y).sum().item()
            seen += len(part)
        if not setup.per_step:
            if setup.warmup_steps:  # restore the scheduler's own lr before it steps
                for g, b in zip(optimizer.param_groups, base_lrs):
                    g["lr"] = scheduler.get_last_lr()[0] * b / r.lr
            scheduler.step()
        val = evaluate(sp.valid)
        rec = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "valid_ua": val["ua"], "valid_wa": val["wa"], "valid_loss": val["loss"]}
        if curves:
            te = evaluate(sp.test)
            rec["test_ua"] = te["ua"]
        history.append(rec)
        value = -val["loss"] if setup.metric == "loss" else val[setup.metric]
        if setup.select == "last" or best_state is None or value > best["value"]:
            best = {"epoch": epoch, "value": value}
            best_state = copy.deepcopy(model.state_dict())
    last = evaluate(sp.test)
    model.load_state_dict(best_state)
    test = evaluate(sp.test)
    return {"fold": fold, "seed": seed, "ua": test["ua"], "wa": test["wa"], "last_ua": last["ua"],
            "best_epoch": best["epoch"], "seconds": time.perf_counter() - began,
            "cpu_seconds": time.process_time() - cpu_began,
            "final_train_loss": history[-1]["train_loss"], "final_train_acc": history[-1]["train_acc"],
            "history": history}


def lr_at_fraction(r: Recipe, e: float) -> float:
    """The recipe's lr at a fractional epoch (per-step schedules)."""
    if r.schedule == "cosine":
        low = r.lr * r.min_lr_ratio
        return low + (r.lr - low) * (1 + math.cos(math.pi * e / r.epochs)) / 2
    if r.schedule == "step":
        return r.lr * r.gamma ** int(e // r.step_size)
    return r.lr


# --- experiments -------------------------------------------------------------------------------
def run_setup(data: Data, setup: Setup, seeds=(123,), folds=(1, 2, 3, 4, 5), with_probe=True, curves=False,
              log: Path | None = None, label: str = "") -> dict:
    """All folds x seeds of one setup; the probe on the same splits beside it."""
    rows, prows = [], []
    for seed in seeds:
        for fold in folds:
            out = run_fold(data, setup, fold, seed, curves=curves)
            if not curves:
                out.pop("history")
            rows.append(out)
            if with_probe:
                sp = split(data, fold, seed)
                prows.append({"fold": fold, "seed": seed,
                              "ua": probe(data, sp.train, sp.test, setup.modalities)["ua"]})
    res = {"label": label, "data": data.name, "setup": asdict(setup), "rows": rows, "probe": prows,
           **summarise(rows, "ua"), **{"probe_" + k: v for k, v in summarise(prows, "ua").items()}}
    res["seconds"] = sum(r["seconds"] for r in rows)
    if log is not None:
        with open(log, "a") as f:
            f.write(json.dumps(res, default=list) + "\n")
    return res


def summarise(rows, key="ua") -> dict:
    """mean; std over folds (mean over seeds of the per-seed std); std over seeds (of the per-seed means)."""
    if not rows:
        return {}
    seeds = sorted({r["seed"] for r in rows})
    per_seed = [[r[key] for r in rows if r["seed"] == s] for s in seeds]
    means = [np.mean(v) for v in per_seed]
    return {"mean": float(np.mean([r[key] for r in rows])),
            "std_folds": float(np.mean([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in per_seed])),
            "std_seeds": float(np.std(means, ddof=1)) if len(means) > 1 else 0.0,
            "n": len(rows)}


def fmt(res: dict) -> str:
    s = f"{100 * res['mean']:5.1f} ± {100 * res['std_folds']:4.1f}"
    if res.get("std_seeds"):
        s += f" (seeds ± {100 * res['std_seeds']:.1f})"
    p = f"{100 * res['probe_mean']:5.1f} ± {100 * res['probe_std_folds']:4.1f}" if "probe_mean" in res else "-"
    return f"{res['label']:<40} model UA {s}   probe UA {p}   [{res['seconds']:.0f} s]"
