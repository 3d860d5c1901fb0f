"""The class loss of a training step: plain, class-weighted or focal cross-entropy.

``--loss`` (a recipe setting, recorded in run.json) picks one of :data:`LOSSES`:

- ``ce``: plain cross-entropy, the mean over the batch (the public code's loss; the default).
- ``weighted-ce``: each utterance's cross-entropy weighted by its class's weight, the weights
  from the training fold's class priors (:func:`class_weights`); the batch's loss is the
  weighted mean, as ``torch.nn.functional.cross_entropy(weight=...)`` takes it.
- ``focal``: the focal loss of Lin et al. (2017), ``-(1 - p_t)^gamma log p_t`` with ``p_t`` the
  probability of the true class (``--focal-gamma``; gamma 0 is plain cross-entropy).
- ``weighted-focal``: the focal loss with the class weights of ``weighted-ce`` (gamma 0 is
  ``weighted-ce``).

:func:`class_loss` builds the one a fold trains with; the training step calls it with the
logits and the labels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

LOSSES = ("ce", "weighted-ce", "focal", "weighted-focal")
#: How reports and ``ksr train`` name each loss.
LOSS_NAMES = {
    "ce": "cross-entropy",
    "weighted-ce": "class-weighted cross-entropy",
    "focal": "focal loss",
    "weighted-focal": "class-weighted focal loss",
}
DEFAULT_FOCAL_GAMMA = 2.0

ClassLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def is_class_weighted(loss: str) -> bool:
    return loss in ("weighted-ce", "weighted-focal")


def is_focal(loss: str) -> bool:
    return loss in ("focal", "weighted-focal")


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights from the training labels, normalised so that the prior-weighted
    mean weight is 1: ``w_c = n / (K * n_c)`` over the K classes present (scikit-learn's
    ``class_weight='balanced'``). A class absent from the labels gets weight 0 (it has no
    utterance to weight)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def focal_loss(
    logits: torch.Tensor, labels: torch.Tensor, gamma: float, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """The mean focal loss of a batch; with ``weight`` the mean weighted by each utterance's class
    weight (``weight[labels]``), as weighted cross-entropy averages."""
    log_p = F.log_softmax(logits, dim=-1).gather(1, labels[:, None])[:, 0]
    # Floored above 0: at p_t = 1 the power's gradient would be inf (gamma < 1) times log p_t = 0.
    modulator = (1 - log_p.exp()).clamp(min=1e-12) ** gamma if gamma else 1.0
    per_utterance = -modulator * log_p
    if weight is None:
        return per_utterance.mean()
    w = weight.to(logits.device)[labels]
    return (w * per_utterance).sum() / w.sum()


def class_loss(loss: str, focal_gamma: float, train_labels: np.ndarray, num_classes: int) -> ClassLoss:
    """The loss a fold trains with: ``fn(logits, labels) -> scalar``; class weights (if any) from
    the fold's training labels."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    weight = class_weights(train_labels, num_classes) if is_class_weighted(loss) else None
    if is_focal(loss):
        return lambda logits, labels: focal_loss(logits, labels, focal_gamma, weight)
    if weight is None:
        return F.cross_entropy  # the default: exactly the loss the loop always computed
    return lambda logits, labels: F.cross_entropy(logits, labels, weight=weight.to(logits.device))


def describe_loss(loss: str, focal_gamma: float, sampler: str = "shuffle") -> str:
    """``class-weighted focal loss (gamma 2), class-balanced batches``: a run's loss in words."""
    name = LOSS_NAMES.get(loss, loss)
    if is_focal(loss):
        name += f" (gamma {focal_gamma:g})"
    return name + (", class-balanced batches" if sampler == "balanced" else "")


def constant_prediction_loss(
    loss: str, focal_gamma: float, sampler: str, train_labels: np.ndarray, num_classes: int
) -> float:
    """The training loss of a model that ignores its input: ``class_loss``'s value for the best
    constant logits, over the class shares an epoch draws (the training fold's; equal ones under
    the balanced sampler). For plain cross-entropy over shuffled batches it is the entropy of the
    class shares; a weighted loss or balanced batches raise it to ln K, a focal loss lowers it.
    What ``chance.StallWatch`` compares a non-default loss with."""
    fn = class_loss(loss, focal_gamma, train_labels, num_classes)
    drawn = np.unique(train_labels) if sampler == "balanced" else np.asarray(train_labels)
    labels = torch.as_tensor(drawn, dtype=torch.long)
    logits = torch.zeros(num_classes, requires_grad=True)  # float32, as the training step computes
    search = torch.optim.LBFGS([logits], max_iter=200, line_search_fn="strong_wolfe")

    def value() -> torch.Tensor:
        search.zero_grad()
        out = fn(logits.expand(len(labels), num_classes), labels)
        out.backward()
        return out

    search.step(value)
    with torch.no_grad():
        return float(fn(logits.expand(len(labels), num_classes), labels))
