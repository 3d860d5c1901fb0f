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
