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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...cache import Cache
from ..model.model import KSTransformer


@dataclass
class Inference:
    preds: np.ndarray  # (N,) predicted class indexes
    probs: np.ndarray  # (N, C) class probabilities
    loss: float  # mean cross-entropy


def autocast(device: torch.device, amp: bool):
    """bfloat16 autocast on GPU when asked; a no-op context otherwise."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


@torch.no_grad()
def infer(
    model: KSTransformer, cache: Cache, indices: np.ndarray, batch_size: int, device: torch.device, amp: bool = False
) -> Inference:
    """The model (put in eval mode) over the cache utterances ``indices``."""
    model.eval()
    preds, probs, loss_sum = [], [], 0.0
    for batch in cache.loader(indices, batch_size=batch_size):
        batch = batch.to(device)
        with autocast(device, amp):
            logits = model(batch.audio, batch.text, batch.audio_padding_mask, batch.text_padding_mask).float()
        loss_sum += F.cross_entropy(logits, batch.labels, reduction="sum").item()
        p = logits.softmax(-1)
        probs.append(p.cpu().numpy())
        preds.append(p.argmax(-1).cpu().numpy())
    if not preds:
        return Inference(np.zeros(0, np.int64), np.zeros((0, model.cfg.num_classes)), 0.0)
    return Inference(np.concatenate(preds), np.concatenate(probs), loss_sum / len(indices))


#: The attributes' names, in the order of a model's attributes output (when it has one).
ATTRIBUTES = ("arousal", "valence", "dominance")


@dataclass
class Outputs:
    """What a model (or the mean of several) says about cache utterances."""

    probs: np.ndarray  # (N, C) float64 class probabilities
    attributes: np.ndarray | None = None  # (N, A) float64, when the model predicts attributes
    attribute_names: tuple[str, ...] = ()


def output_parts(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, attributes or None) of a forward pass: a logits tensor, a ``(logits, attributes)``
    pair, or a dict of named outputs (``logits``, ``attributes``)."""
    if isinstance(out, torch.Tensor):
        return out, None
    if isinstance(out, dict):
        return out["logits"], out.get("attributes")
    logits, attributes = out
    return logits, attributes


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
        out = model(batch.audio, batch.text, batch.audio_padding_mask, batch.text_padding_mask)
        logits, attrs = output_parts(out)
        probs.append(logits.float().softmax(-1).cpu().double().numpy())
        if attrs is not None:
            attributes.append(attrs.float().cpu().double().numpy())
        if on_batch is not None:
            on_batch(len(batch))
    if not probs:
        return Outputs(np.zeros((0, model.cfg.num_classes)))
    if not attributes:
        return Outputs(np.concatenate(probs))
    values = np.concatenate(attributes)
    return Outputs(np.concatenate(probs), values, ATTRIBUTES[: values.shape[1]])


def ensemble_outputs(members: Sequence[Outputs]) -> Outputs:
    """The members' mean: of class probabilities, and of attributes when every member has them."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    probs = np.mean([m.probs for m in members], axis=0)
    if all(m.attributes is not None for m in members):
        return Outputs(probs, np.mean([m.attributes for m in members], axis=0), members[0].attribute_names)
    return Outputs(probs)
