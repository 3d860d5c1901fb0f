"""What the model's output holds for its task: class logits, attribute values, or both.

``ModelConfig.task`` is ``classes`` (the paper's model: the output is the logits, exactly as
before), ``attributes`` or ``both``. The latter two add a regression head on the same pooled,
fused representation the classifier reads, with one output per attribute of the cache
(``ModelConfig.attributes``, names from the manifest). The model's ``forward`` keeps one tensor
as its output, the class logits followed by the attribute values, (B, num_classes + A), so
every caller (training, inference, export, prediction) splits it here, with
:func:`split_outputs`, and never by hand. Under ``attributes`` the class columns come from a
classifier that was never trained: :func:`split_outputs` leaves them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import ModelConfig


def learns_classes(cfg: ModelConfig) -> bool:
    return cfg.task in ("classes", "both")


def learns_attributes(cfg: ModelConfig) -> bool:
    return cfg.task in ("attributes", "both")


def output_width(cfg: ModelConfig) -> int:
    """Columns of the model's output: the class logits, then one per attribute when it learns them."""
    return cfg.num_classes + (len(cfg.attributes) if learns_attributes(cfg) else 0)


def attribute_head(width: int, cfg: ModelConfig) -> nn.Module | None:
    """The regression head on the pooled representation (``width`` wide), or None for task classes.

    Two layers like the classifier's first and last (linear, ReLU, dropout, linear); built after
    every other module, so a model of task classes draws exactly the random numbers it always did.
    """
    if not learns_attributes(cfg):
        return None
    return nn.Sequential(
        nn.Linear(width, width // 2),
        nn.ReLU(),
        nn.Dropout(cfg.classifier_dropout),
        nn.Linear(width // 2, len(cfg.attributes)),
    )


def join_outputs(logits: Tensor, head: nn.Module | None, pooled: Tensor) -> Tensor:
    """The model's output: the logits, with the head's attribute values after them when there is a head."""
    if head is None:
        return logits
    return torch.cat((logits, head(pooled).to(logits.dtype)), dim=-1)


@dataclass
class TaskOutputs:
    """A model output split by task: ``logits`` (B, num_classes) or None when the model does not
    learn classes; ``attributes`` (B, A) in ``ModelConfig.attributes`` order, or None."""

    logits: Tensor | None
    attributes: Tensor | None


def attributes_by_name(output: Tensor, cfg: ModelConfig) -> dict[str, Tensor]:
    """The attribute values of a model output (B, :func:`output_width`) by name: {name: (B,)}, in
    ``cfg.attributes`` order; {} for a model that does not learn attributes. Batch prediction
    (many utterances at once) calls this on the model's output."""
    values = split_outputs(output, cfg).attributes
    if values is None:
        return {}
    return {name: values[..., j] for j, name in enumerate(cfg.attributes)}


def split_outputs(output: Tensor, cfg: ModelConfig) -> TaskOutputs:
    """Split the model's output (B, :func:`output_width`) into its class logits and attribute values."""
    if output.shape[-1] != output_width(cfg):
        raise ValueError(
            f"a model output of {output.shape[-1]} columns, the task {cfg.task!r} gives {output_width(cfg)}"
        )
    k = cfg.num_classes
    return TaskOutputs(
        logits=output[..., :k] if learns_classes(cfg) else None,
        attributes=output[..., k:] if learns_attributes(cfg) else None,
    )
