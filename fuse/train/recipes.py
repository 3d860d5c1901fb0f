"""Training recipes: named presets of optimiser, schedule and batch, every value overridable.

- ``paper``: what the paper states: SGD, lr 5e-4, lr halved every 30 epochs, batch 32. It states
  no momentum (0 here), epoch count or seed (120 and 123 here, as in the public code).
- ``official``: what the public implementation runs: SGD with momentum 0.9, lr 5e-4, cosine
  annealing to lr/1000 over 120 epochs, batch 32 (16 per GPU on 2 GPUs), seed 123.
- ``ksr``: what ksr's learning study found to train (docs/learning.md): AdamW, lr 4e-3, one epoch
  of linear warm-up, cosine, 24 epochs, batch 16, with the inputs standardised per dimension
  and classifier dropout 0.2 (the model settings a preset brings, ``PRESET_MODEL_SETTINGS``). A
  departure from both.

A recipe holds optimisation only (the class loss and the order of the training batches among
it: ``losses``, ``sampling``; the defaults are the public code's); every model setting
(classifier dropout included) lives in ``ModelConfig``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from .losses import DEFAULT_FOCAL_GAMMA, LOSSES
from .sampling import SAMPLERS

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "constant")


@dataclass
class Recipe:
    name: str = "paper"
    optimizer: str = "sgd"  # "adamw" is a departure from both presets (used by the quick demo)
    lr: float = 5e-4
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "step"  # "step" | "cosine" | "constant"
    step_size: int = 30  # step: epochs between decays
    gamma: float = 0.5  # step: decay factor
    min_lr_ratio: float = 1e-3  # cosine: final lr = lr * min_lr_ratio
    epochs: int = 120
    batch_size: int = 32
    seed: int = 123
    # Linear warm-up over the first this-many epochs, per optimisation step, scaling the
    # schedule's learning rate (0: none, as in both public presets).
    warmup_epochs: float = 0.0
    # The class loss and the batches' order (docs/learning.md, "Imbalanced classes").
    loss: str = "ce"  # ksr.fuse.train.losses.LOSSES
    focal_gamma: float = DEFAULT_FOCAL_GAMMA  # used by the focal losses only
    sampler: str = "shuffle"  # ksr.fuse.train.sampling.SAMPLERS

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if not self.focal_gamma >= 0:
            raise ValueError(f"focal_gamma must be 0 or more, got {self.focal_gamma}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        for name in ("lr", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        # Runs written by ksr 0.1 also recorded the model's classifier dropout here.
        return cls(**{k: v for k, v in d.items() if k != "classifier_dropout"})

    def lr_at(self, epoch: int) -> float:
        """The learning rate used during 0-based ``epoch`` (closed form, for reports and tests)."""
        if self.schedule == "step":
            return self.lr * self.gamma ** (epoch // self.step_size)
        if self.schedule == "cosine":
            low = self.lr * self.min_lr_ratio
            return low + (self.lr - low) * (1 + math.cos(math.pi * epoch / self.epochs)) / 2
        return self.lr


PRESETS = {
    "paper": Recipe(name="paper"),
    "official": Recipe(name="official", momentum=0.9, schedule="cosine"),
    "ksr": Recipe(
        name="ksr", optimizer="adamw", lr=4e-3, schedule="cosine", epochs=24, batch_size=16, warmup_epochs=1.0
    ),
}
# The model settings a preset stands for besides its recipe (options typed on the command line
# still win). The public presets bring none: their model is the public code's.
PRESET_MODEL_SETTINGS: dict[str, dict[str, Any]] = {"ksr": {"input_norm": "standardize", "classifier_dropout": 0.2}}
# What ksr train says when a preset is chosen that the learning study found not to train.
PRESET_NOTES = {
    name: f"note: the {name} recipe (SGD at lr 5e-4) did not train in 120 epochs in ksr's learning study "
    "(docs/learning.md: training loss flat, UA at chance on the demo corpus); --recipe ksr does"
    for name in ("paper", "official")
}


# The ksr recipe's learning rate and warm-up were tuned on the small model (``MODEL_SIZES``), whose
# stacks hold SCALING_REFERENCE_LAYERS attention layers; deeper models take the learning rate
# divided by the depth ratio squared and the warm-up multiplied by it (capped at a quarter of the
# epochs, never below the recipe's own), so the default model (26 layers) trains at about 3.8e-4 with 3.2 warm-up epochs: measured in
# docs/learning.md ("Every model size"), where 4e-3 leaves it at chance.
SCALED_RECIPES = ("ksr",)
SCALING_REFERENCE_LAYERS = 8


def scaled_for_model(r: Recipe, layers: int, keep: set[str] = frozenset()) -> tuple[Recipe, str | None]:
    """The recipe ``r`` scaled for a model of ``layers`` attention layers (the ksr recipe only;
    the settings named in ``keep``, typed by the user, stay) and one line saying what changed and
    why (None when nothing did)."""
    if r.name not in SCALED_RECIPES or layers <= SCALING_REFERENCE_LAYERS:
        return r, None
    ratio = layers / SCALING_REFERENCE_LAYERS
    changes: dict[str, Any] = {}
    if "lr" not in keep:
        changes["lr"] = float(f"{r.lr / ratio**2:.2g}")
    if "warmup_epochs" not in keep:
        changes["warmup_epochs"] = round(min(r.warmup_epochs * ratio, max(r.warmup_epochs, r.epochs / 4)), 1)
    if not changes:
        return r, None
    chose = " and ".join(
        f"lr {changes['lr']:g} (not {r.lr:g})"
        if k == "lr"
        else f"{changes[k]:g} warm-up epochs (not {r.warmup_epochs:g})"
        for k in changes
    )
    line = (
        f"ksr recipe scaled for this model: {chose}, because its {layers} attention layers are {ratio:.2g}x the "
        f"{SCALING_REFERENCE_LAYERS} of the small model the recipe was tuned on (at 4e-3 deeper models stay at "
        f"chance); --lr / --warmup-epochs set them yourself"
    )
    return dataclasses.replace(r, **changes), line


def recipe(name: str, **overrides: Any) -> Recipe:
    """A preset with command-line overrides applied (``None`` values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(Recipe)})
    if unknown:
        raise ValueError(f"unknown recipe settings: {', '.join(unknown)}")
    return dataclasses.replace(PRESETS[name], **changes)


def warmup_factor(r: Recipe, step: int, steps_per_epoch: int) -> float:
    """The warm-up's factor on the learning rate at 0-based optimisation ``step`` (1 after it)."""
    warmup_steps = math.ceil(r.warmup_epochs * steps_per_epoch)
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def build_optimizer(params, r: Recipe) -> torch.optim.Optimizer:
    trainable = [p for p in params if p.requires_grad]  # positional tables stay out
    if r.optimizer == "adamw":
        return torch.optim.AdamW(trainable, lr=r.lr, weight_decay=r.weight_decay)
    return torch.optim.SGD(trainable, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, r: Recipe) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch, after the epoch."""
    if r.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=r.step_size, gamma=r.gamma)
    if r.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=r.epochs, eta_min=r.lr * r.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
