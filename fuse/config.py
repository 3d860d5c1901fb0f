"""The KS-Transformer's configuration: one JSON-able dataclass for every size and option.

The defaults are the public implementation's default model (dims 512/1024, FFN 256/512,
layers (5, 3, 2), 8 heads, keep rate 0.5, 4 classes). The fidelity options at the end all
default to what the public implementation computes; each names one of its quirks (see
``ksr.fuse.quirks``) so that a departure is a visible, named choice.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

MODALITIES = ("both", "audio", "text")
POSITIONAL_TABLES = ("xavier", "sinusoidal")
POOLINGS = ("all_positions", "masked")
CCAB_RESIDUALS = ("double", "single")
ATTENTION_IMPLS = ("fast", "plain")


@dataclass
class ModelConfig:
    audio_dim: int = 512
    text_dim: int = 1024
    audio_ffn_dim: int = 256
    text_ffn_dim: int = 512
    # (unimodal encoder layers, CCABs per direction, deep-fusion layers); the public
    # implementation uses the same counts for audio and text.
    num_layers: tuple[int, int, int] = (5, 3, 2)
    num_heads: int = 8
    keep_rate: float = 0.5
    num_classes: int = 4
    dropout: float = 0.1  # after attention, inside the FFN, after the FFN
    attention_dropout: float = 0.1  # on the attention weights
    classifier_dropout: float = 0.5
    max_positions: int = 2000  # rows of each positional table
    # Which blocks use key-sparse attention. "interaction+fusion" is the paper's model;
    # "none" gives vanilla attention everywhere (the key-sparse-off ablation).
    key_sparse: str = "interaction+fusion"
    # "both" is the paper's model. "audio" / "text" keep one modality's encoder, deep-fusion
    # block and pooling (no CCABs: there is nothing to attend to) for the unimodal ablations.
    modalities: str = "both"
    # "fast" (fuse.fast_attention) computes what "plain" computes, without keeping the
    # attention maps; "plain" performs the public code's operations and is the reference.
    attention_impl: str = "fast"

    # --- fidelity options: the defaults reproduce the public implementation -----------------
    positional_table: str = "xavier"  # quirk FIXED_RANDOM_POSITIONS
    pooling: str = "all_positions"  # quirk POOLING_OVER_PADDING
    mask_interaction_self: bool = False  # quirk MASKS_ONLY_WHERE_USED (CCAB self layer)
    mask_fusion: bool = False  # quirk MASKS_ONLY_WHERE_USED (deep-fusion layers)
    ccab_residual: str = "double"  # quirk DOUBLE_CCAB_RESIDUAL
    ks_renormalise: bool = False  # quirk KS_NO_RENORMALISATION

    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (provenance)

    def __post_init__(self) -> None:
        self.num_layers = tuple(int(n) for n in self.num_layers)  # JSON gives lists
        self.validate()

    def validate(self) -> None:
        problems = []
        if len(self.num_layers) != 3 or min(self.num_layers) < 0:
            problems.append(f"num_layers must be 3 counts >= 0, got {self.num_layers}")
        for name in ("audio_dim", "text_dim"):
            dim = getattr(self, name)
            if dim <= 0 or dim % self.num_heads:
                problems.append(f"{name}={dim} must be a positive multiple of num_heads={self.num_heads}")
        if not 0.0 < self.keep_rate <= 1.0:
            problems.append(f"keep_rate must be in (0, 1], got {self.keep_rate}")
        if self.num_classes < 2:
            problems.append(f"num_classes must be >= 2, got {self.num_classes}")
        for name, allowed in (
            ("positional_table", POSITIONAL_TABLES),
            ("pooling", POOLINGS),
            ("ccab_residual", CCAB_RESIDUALS),
            ("attention_impl", ATTENTION_IMPLS),
            ("key_sparse", ("interaction+fusion", "none")),
            ("modalities", MODALITIES),
        ):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["num_layers"] = list(self.num_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# Each departure from the public implementation, by name: the config changes it makes. "public"
# is the default model; "all" takes every departure at once. `ksr ablate departures` trains one
# run per name, so every improvement is measured against the model it departs from.
DEPARTURES: dict[str, dict[str, Any]] = {
    "public": {},
    "sinusoidal-positions": {"positional_table": "sinusoidal"},
    "masked-pooling": {"pooling": "masked"},
    "mask-ccab-self": {"mask_interaction_self": True},
    "mask-fusion": {"mask_fusion": True},
    "single-ccab-residual": {"ccab_residual": "single"},
    "ks-renormalise": {"ks_renormalise": True},
}
DEPARTURES["all"] = {k: v for changes in DEPARTURES.values() for k, v in changes.items()}


def apply_departure(cfg: ModelConfig, name: str) -> ModelConfig:
    if name not in DEPARTURES:
        raise ValueError(f"unknown departure {name!r}; choose from {', '.join(DEPARTURES)}")
    return cfg.replace(**DEPARTURES[name])


def parse_model_option(text: str) -> tuple[str, Any]:
    """``"pooling=masked"`` -> ("pooling", "masked"), the value read as the field's type."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip().replace("-", "_"), raw.strip()
    fields = {f.name: f for f in dataclasses.fields(ModelConfig) if f.name != "extra"}
    if not sep or key not in fields:
        raise ValueError(f"model option {text!r}: write KEY=VALUE with KEY one of {', '.join(fields)}")
    default = getattr(ModelConfig(), key)
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return key, raw.lower() in ("true", "1", "yes")
        if isinstance(default, tuple):
            return key, tuple(int(v) for v in raw.split(","))
        return key, type(default)(raw)
    except ValueError:
        raise ValueError(f"model option {text!r}: {raw!r} is not a valid {key} "
                         f"(the default is {default!r})") from None

