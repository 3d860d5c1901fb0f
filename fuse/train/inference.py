"""Batch inference over cache utterances: predicted classes, probabilities, mean loss.

(``ksr predict``, one utterance from audio and text, is ``ksr.predict``; this is the trainer's
and the reports' pass over a fold's utterances, and the ensembles' pass: :func:`model_outputs`
and :func:`ensemble_outputs` give class probabilities, and the attributes when a model
predicts them, without reading the cache's labels, so they serve unlabelled caches and
caches of other corpora.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...cache import Cache
from ..model.model import KSTransformer
from ..model.tasks import learns_attributes, learns_classes, split_outputs
from .metrics import attribute_scores


@dataclass
class Inference:
    preds: np.ndarray  # (N,) predicted class indexes
    probs: np.ndarray  # (N, C) class probabilities
    loss: float  # mean cross-entropy; a model of task attributes: 1 - the mean CCC over the set
    #: (N, A) predicted attribute values (model.cfg.attributes order); None unless the model learns them
    attributes: np.ndarray | None = None


def autocast(device: torch.device, amp: bool):
    """bfloat16 autocast on GPU when asked; a no-op context otherwise."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


@torch.no_grad()
def infer(
    model: KSTransformer, cache: Cache, indices: np.ndarray, batch_size: int, device: torch.device, amp: bool = False
) -> Inference:
    """The model (put in eval mode) over the cache utterances ``indices``."""
    model.eval()
    cfg = model.cfg
    preds, probs, values, loss_sum = [], [], [], 0.0
    for batch in cache.loader(indices, batch_size=batch_size):
        batch = batch.to(device)
        with autocast(device, amp):
            output = model(batch.audio, batch.text, batch.audio_padding_mask, batch.text_padding_mask).float()
        split = split_outputs(output, cfg)
        logits = output[..., : cfg.num_classes]  # a model of task attributes: an untrained classifier's
        if learns_classes(cfg):
            loss_sum += F.cross_entropy(logits, batch.labels, reduction="sum").item()
        if split.attributes is not None:
            values.append(split.attributes.cpu().numpy())
        p = logits.softmax(-1)
        probs.append(p.cpu().numpy())
        preds.append(p.argmax(-1).cpu().numpy())
    if not preds:
        empty = np.zeros((0, len(cfg.attributes))) if learns_attributes(cfg) else None
        return Inference(np.zeros(0, np.int64), np.zeros((0, cfg.num_classes)), 0.0, empty)
    predicted = np.concatenate(values) if values else None
    if not learns_classes(cfg):
        truth = cache.attributes[np.asarray(indices)][:, [list(cache.attribute_names).index(a) for a in cfg.attributes]]
        loss_sum = len(indices) * (1.0 - attribute_scores(truth, predicted, cfg.attributes)["ccc"])
    return Inference(np.concatenate(preds), np.concatenate(probs), loss_sum / len(indices), predicted)


@dataclass
class Outputs:
    """What a model (or the mean of several) says about cache utterances."""

    probs: np.ndarray | None  # (N, C) float64 class probabilities; None: the model learns no classes
    attributes: np.ndarray | None = None  # (N, A) float64, when the model predicts attributes
    attribute_names: tuple[str, ...] = ()


@torch.no_grad()
def model_outputs(
    model: KSTransformer,
    cache: Cache,
    indices: np.ndarray | None = None,
    batch_size: int = 32,
    device: torch.device = torch.device("cpu"),
    on_batch: Callable[[int], None] | None = None,
) -> Outputs:
    """The model (put in eval mode) over the cache utterances ``indices`` (None: all), in that
    order; labels are not read. ``on_batch(n)`` after each batch of ``n`` utterances."""
    model.eval()
    probs, attributes = [], []
    for batch in cache.loader(indices, batch_size=batch_size):
        batch = batch.to(device)
        out = model(batch.audio, batch.text, batch.audio_padding_mask, batch.text_padding_mask).float()
        attrs = split_outputs(out, model.cfg).attributes
        probs.append(out[..., : model.cfg.num_classes].softmax(-1).cpu().double().numpy())
        if attrs is not None:
            attributes.append(attrs.cpu().double().numpy())
        if on_batch is not None:
            on_batch(len(batch))
    cfg = model.cfg
    classes = (np.concatenate(probs) if probs else np.zeros((0, cfg.num_classes))) if learns_classes(cfg) else None
    if not learns_attributes(cfg):
        return Outputs(classes)
    values = np.concatenate(attributes) if attributes else np.zeros((0, len(cfg.attributes)))
    return Outputs(classes, values, tuple(cfg.attributes))


def ensemble_outputs(members: Sequence[Outputs]) -> Outputs:
    """The members' mean: of class probabilities, and of attributes, each when every member has them."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    probs = None if any(m.probs is None for m in members) else np.mean([m.probs for m in members], axis=0)
    if all(m.attributes is not None for m in members):
        return Outputs(probs, np.mean([m.attributes for m in members], axis=0), members[0].attribute_names)
    return Outputs(probs)
