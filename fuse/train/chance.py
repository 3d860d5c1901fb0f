"""Chance level: when a model is not learning, or scores worse than guessing, and what to try.

Two checks, said while it happens (training prints them) and kept in the report:

- **stalled**: after the warm-up (and at least a full epoch, and 15% of the epochs), the training loss is still
  within ``STALL_TOLERANCE`` of the loss of guessing the training class shares (their entropy:
  ln C for C balanced classes; under a weighted or focal loss or balanced batches, that loss's value
  for the best constant prediction, ``losses.constant_prediction_loss``). The model has learnt
  nothing from the features.
- **below chance**: a fold's test UA is below 1 / C, what guessing scores on average. With the
  validation set drawn from the training speakers this is often a speaker shift that validation
  could not see.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..model.config import ModelConfig, attention_layers
from .losses import constant_prediction_loss
from .recipes import SCALING_REFERENCE_LAYERS, Recipe

#: The training loss counts as "at chance" above this share of the chance loss. Runs that stayed
#: at chance in ksr's learning study sat at 1.00-1.02 of it; slow starters that went on to learn
#: were at 0.97-0.99 at the epoch checked (docs/learning/log_*.jsonl).
STALL_TOLERANCE = 0.995
#: The loss is first checked after this share of the epochs (and a full epoch after the warm-up).
STALL_CHECK_SHARE = 0.15


def chance_loss(train_labels: Sequence[int], num_classes: int) -> float:
    """The cross-entropy of always predicting the training class shares (ln C when balanced)."""
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_classes).astype(float)
    shares = counts[counts > 0] / counts.sum()
    return float(-(shares * np.log(shares)).sum())


def first_checked_epoch(r: Recipe) -> int:
    """The 0-based epoch after which the loss is first checked: a full epoch after the warm-up
    (epoch 1 without one: the first epoch starts from random weights), and not before
    STALL_CHECK_SHARE of the epochs (some models start learning after a few epochs)."""
    return max(math.ceil(r.warmup_epochs) + (1 if r.warmup_epochs else 0), 1, round(STALL_CHECK_SHARE * r.epochs))


def stalled(epoch: int, train_loss: float, chance: float, r: Recipe) -> bool:
    """Whether the training loss of 0-based ``epoch`` is still at chance after the warm-up."""
    return chance > 0 and epoch >= first_checked_epoch(r) and train_loss >= STALL_TOLERANCE * chance


def stall_check_applies(r: Recipe, cfg: ModelConfig) -> bool:
    """Only class tasks are checked: a loss with an attribute (CCC) term has no chance level."""
    return cfg.task == "classes"


def stall_advice(r: Recipe, cfg: ModelConfig) -> str:
    """What to try when the loss does not move, for this recipe and model."""
    tips = [f"a lower --lr (this run: {r.lr:g}; try {r.lr / 4:.2g})"]
    if cfg.architecture == "ks-transformer" and attention_layers(cfg) > SCALING_REFERENCE_LAYERS:
        tips.append("--size small")
    if r.name != "ksr":
        tips.append("--recipe ksr (AdamW with warm-up, its learning rate scaled to the model's depth)")
    elif cfg.input_norm == "none":
        tips.append("--input-norm standardize")
    return "try " + ", or ".join(tips)


def stall_message(where: str, epoch: int, train_loss: float, chance: float, r: Recipe, cfg: ModelConfig) -> str:
    return (
        f"{where}, epoch {epoch + 1}: the training loss {train_loss:.3f} is still at chance level "
        f"({chance:.3f}, the loss of guessing the class shares) after the warm-up: the model is not learning; "
        + stall_advice(r, cfg)
    )


def below_chance(ua: float, num_classes: int) -> bool:
    """Whether a test UA is below what guessing scores (1 / C)."""
    return ua < 1.0 / num_classes - 1e-9


def below_chance_message(where: str, ua: float, num_classes: int) -> str:
    return (
        f"{where}: test UA {100 * ua:.1f}% is below chance ({100 / num_classes:.1f}% for {num_classes} "
        f"classes): the test speakers differ from the training ones in a way a validation set drawn from the "
        f"training speakers cannot see; try --speaker-norm speaker (per-speaker feature statistics), "
        f"--validation speaker (validate on a held-out training speaker) or --size small"
    )


class StallWatch:
    """Watches one fold's training losses; says once when the loss is still at chance."""

    def __init__(self, where: str, train_labels: Sequence[int], r: Recipe, cfg: ModelConfig) -> None:
        self.where, self.recipe, self.cfg = where, r, cfg
        self.chance = (
            chance_loss(train_labels, cfg.num_classes)
            if (r.loss, r.sampler) == ("ce", "shuffle")
            else constant_prediction_loss(r.loss, r.focal_gamma, r.sampler, np.asarray(train_labels), cfg.num_classes)
        )
        # a loss with an attribute (CCC) term has no class-chance level to compare with
        self.said = cfg.task != "classes"

    def check(self, epoch: int, train_loss: float) -> str | None:
        """The warning for this epoch's loss, the first time it is due (None otherwise)."""
        if self.said or not stalled(epoch, train_loss, self.chance, self.recipe):
            return None
        self.said = True
        return stall_message(self.where, epoch, train_loss, self.chance, self.recipe, self.cfg)
