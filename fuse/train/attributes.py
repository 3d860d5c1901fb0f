"""Training on numeric attributes: the CCC loss, the loss of each task, and the scores of an epoch.

The attribute loss is the mean over attributes of ``1 - CCC`` (Lin's concordance correlation,
population moments, computed over the batch), each attribute over the utterances that have a
value: a NaN target is masked out of the loss as it is of the scores, and an attribute with
fewer than two values in a batch adds nothing. Under task ``both`` the loss is
``class loss + attribute_weight * attribute loss``; under ``attributes`` the attribute loss alone.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ...cache import Batch, Cache
from ..model.config import ModelConfig
from ..model.tasks import TaskOutputs, learns_attributes, learns_classes
from .inference import Inference
from .metrics import ATTRIBUTE_METRIC, METRICS, attribute_scores, scores

#: Guards the CCC's denominator against a batch where prediction and target are both constant.
_EPS = 1e-8


def ccc_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """Mean over attributes of ``1 - CCC(predicted[:, j], target[:, j])`` over the rows whose
    target is not NaN; (B, A) each. Attributes with fewer than two values are left out; with
    none left the loss is 0 (and still part of the graph)."""
    predicted = predicted.float()
    target = target.to(predicted.device, torch.float32)
    terms = []
    for j in range(target.shape[1]):
        have = ~torch.isnan(target[:, j])
        if int(have.sum()) < 2:
            continue
        x, y = predicted[have, j], target[have, j]
        mx, my = x.mean(), y.mean()
        cov = ((x - mx) * (y - my)).mean()
        den = ((x - mx) ** 2).mean() + ((y - my) ** 2).mean() + (mx - my) ** 2
        terms.append(1.0 - 2.0 * cov / (den + _EPS))
    if not terms:
        return predicted.sum() * 0.0
    return torch.stack(terms).mean()


def true_attributes(cache: Cache, indices: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """The cache's values (N, A) of the attributes the model predicts, in the model's order;
    a cache without one of them is refused in one line."""
    names = list(cache.attribute_names)
    missing = [a for a in cfg.attributes if a not in names]
    if missing:
        raise ValueError(
            f"cache {cache.root} holds no {', '.join(missing)} values (it has {names or 'no attributes'}); "
            f"the model predicts {list(cfg.attributes)}"
        )
    return cache.attributes[np.asarray(indices, dtype=np.int64)][:, [names.index(a) for a in cfg.attributes]]


def task_loss(class_loss: Tensor, outputs: TaskOutputs, targets: Tensor | None, cfg: ModelConfig) -> Tensor:
    """The training loss of the model's task from the class loss already computed (ignored under
    task attributes) and the attribute values against their (B, A) ``targets``."""
    if not learns_attributes(cfg):
        return class_loss
    attribute = ccc_loss(outputs.attributes, targets)
    return attribute if not learns_classes(cfg) else class_loss + cfg.attribute_weight * attribute


def selection_metrics(cfg: ModelConfig) -> tuple[str, ...]:
    """The metrics an epoch of this task is scored on (and may be selected on)."""
    return (METRICS if learns_classes(cfg) else ()) + ((ATTRIBUTE_METRIC,) if learns_attributes(cfg) else ())


def default_metric(cfg: ModelConfig) -> str:
    """The selection metric when none is asked for: WA (as always) unless the model learns attributes only."""
    return "wa" if learns_classes(cfg) else ATTRIBUTE_METRIC


def task_scores(
    labels: np.ndarray,
    preds: np.ndarray | None,
    true_attributes: np.ndarray,
    predicted_attributes: np.ndarray | None,
    cfg: ModelConfig,
) -> dict:
    """The class scores (``metrics.scores``) of a model that learns classes, and the attribute
    scores (``metrics.attribute_scores``: ``ccc``, ``ccc_<name>``, ...) of one that learns them."""
    out: dict = {}
    if learns_classes(cfg):
        out.update(scores(labels, preds, cfg.num_classes))
    if learns_attributes(cfg):
        out.update(attribute_scores(true_attributes, predicted_attributes, cfg.attributes))
    return out


def epoch_scores(cache: Cache, indices: np.ndarray, result: Inference, cfg: ModelConfig) -> dict:
    """:func:`task_scores` of an inference pass over the cache utterances ``indices``."""
    truth = true_attributes(cache, indices, cfg) if learns_attributes(cfg) else None
    return task_scores(cache.labels[indices], result.preds, truth, result.attributes, cfg)


def history_entries(s: dict, cfg: ModelConfig, prefix: str) -> dict[str, float]:
    """An epoch's scores as history / TensorBoard entries: ``{prefix}_<metric>`` for the class
    metrics, ``{prefix}_ccc`` and ``{prefix}_ccc_<name>`` for the attributes (each when learnt)."""
    keys = [m for m in METRICS if learns_classes(cfg)]
    if learns_attributes(cfg):
        keys += [ATTRIBUTE_METRIC, *(f"{ATTRIBUTE_METRIC}_{n}" for n in cfg.attributes)]
    return {f"{prefix}_{k}": float(s[k]) for k in keys}


def attribute_targets(batch: Batch, cache: Cache, cfg: ModelConfig) -> Tensor | None:
    """The batch's (B, A) attribute values in the model's order (NaN = missing); None for task classes."""
    if not learns_attributes(cfg):
        return None
    names = list(cache.attribute_names)
    return batch.attributes[:, [names.index(a) for a in cfg.attributes]]
