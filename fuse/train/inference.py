"""Batch inference over cache utterances: predicted classes, probabilities, mean loss.

(``ksr predict``, one utterance from audio and text, is ``ksr.predict``; this is the trainer's
and the reports' pass over a fold's utterances.)
"""

from __future__ import annotations

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
