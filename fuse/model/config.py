"""The KS-Transformer's configuration: one JSON-able dataclass for every size and option.

The defaults are the public implementation's default model (dims 512/1024, FFN 256/512,
layers (5, 3, 2), 8 heads, keep rate 0.5, 4 classes). The fidelity options at the end all
default to what the public implementation computes; each names one of its quirks, so that a
departure is a visible, named choice. A comment tagged with the quirk's name marks the line
where each quirk acts, and ``tests/fuse/test_quirks.py`` pins every one:

- FIXED_RANDOM_POSITIONS (``positions.py``): the positional tables are fixed xavier-random matrices.
- POSITIONS_IN_EVERY_LAYER (``layers.EncoderLayer``): the table is re-added to every layer's
  attention input; the residual path and the cross-attention values never see it.
- KS_COLUMN_SUMS_OVER_ALL_QUERIES, KS_TIES_KEEP_MORE, KS_NO_RENORMALISATION (``key_sparse.py``).
- MASKS_ONLY_WHERE_USED (``ccab.CCAB``, ``model``): the CCAB self layer and deep fusion attend
  over padding.
- DOUBLE_CCAB_RESIDUAL (``ccab.CCABStack``, ``model``): ``x + (stack(x) + x)``.
- POOLING_OVER_PADDING (``model.pool``): the mean runs over all 460 / 20 positions.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

MODALITIES = ("both", "audio", "text")
POSITIONAL_TABLES = ("xavier", "sinusoidal")
POOLINGS = ("all_positions", "masked")
CCAB_RESIDUALS = ("double", "single")
ATTENTION_IMPLS = ("fast", "plain")
KEY_SPARSE_PLACES = ("interaction+fusion", "none")
# "ks-transformer" is the paper's model; the others are the baselines every result stands beside
# (fuse/baselines.py): the SUPERB/EmoBox head and a linear probe on pooled statistics.
ARCHITECTURES = ("ks-transformer", "head", "probe")
INPUT_NORMS = ("none", "standardize")
SPEAKER_NORMS = ("none", "speaker", "session")
# What the model learns (fuse/model/tasks.py): the classes (the paper's model), the cache's
# numeric attributes (a regression head on the fused representation), or both in one model.
TASKS = ("classes", "attributes", "both")
# Model fields the cache decides: the features' dims and the classes.
CACHE_FIELDS = ("audio_dim", "text_dim", "num_classes")


def cache_dims(meta: Any) -> dict[str, int]:
    """The CACHE_FIELDS values a cache's metadata (``ksr.cache.CacheMeta``) gives a model."""
    return {"audio_dim": meta.audio_dim, "text_dim": meta.text_dim, "num_classes": len(meta.classes)}


def setting(
    default: Any,
    help: str,
    flag: str = "",
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: tuple[str, ...] = (),
) -> Any:
    """A ModelConfig field that users set from the command line: its help, its flag (default
    ``--field-name``) and its allowed values, all in one place; ``ksr train`` builds its model
    options from these."""
    meta = {
        "help": help,
        "flag": flag,
        "low": low,
        "high": high,
        "low_open": low_open,
        "high_open": high_open,
        "choices": choices,
    }
    return field(default=default, metadata={"cli": meta})


@dataclass
class ModelConfig:
    architecture: str = setting(
        "ks-transformer",
        "ks-transformer (the paper's model), or a baseline on the same folds and reports: head = "
        "linear, ReLU, masked mean pooling, linear (SUPERB/EmoBox); probe = logistic regression on "
        "standardised mean+std pooling (scikit-learn).",
        flag="--model",
        choices=ARCHITECTURES,
    )
    # Dims and classes come from the cache's features (CACHE_FIELDS): never set by hand.
    audio_dim: int = 512
    text_dim: int = 1024
    audio_ffn_dim: int = setting(256, "FFN width of the audio stacks (default 256).", low=1)
    text_ffn_dim: int = setting(512, "FFN width of the text stacks (default 512).", low=1)
    # (unimodal encoder layers, CCABs per direction, deep-fusion layers); the public
    # implementation uses the same counts for audio and text.
    num_layers: tuple[int, int, int] = setting(
        (5, 3, 2), "Layer counts 'unimodal,ccab,fusion' (default 5,3,2).", flag="--layers", low=0
    )
    num_heads: int = setting(8, "Attention heads (default 8); must divide both feature dims.", flag="--heads", low=1)
    keep_rate: float = setting(0.5, "Key-sparse keep rate, in (0, 1] (default 0.5).", low=0.0, high=1.0, low_open=True)
    num_classes: int = 4
    dropout: float = setting(
        0.1, "Dropout after attention, inside and after the FFN (default 0.1).", low=0.0, high=1.0, high_open=True
    )
    attention_dropout: float = setting(
        0.1, "Dropout on the attention weights (default 0.1).", low=0.0, high=1.0, high_open=True
    )
    classifier_dropout: float = setting(
        0.5, "Dropout in the classifier (default 0.5).", low=0.0, high=1.0, high_open=True
    )
    max_positions: int = setting(2000, "Rows of each positional table (default 2000).", low=1)
    # Which stacks use key-sparse attention. "interaction+fusion" is the paper's model;
    # "none" gives vanilla attention everywhere (the key-sparse-off ablation).
    key_sparse: str = setting(
        "interaction+fusion",
        "Where key-sparse attention is used; none = vanilla attention everywhere (ablation).",
        choices=KEY_SPARSE_PLACES,
    )
    # "both" is the paper's model. "audio" / "text" keep one modality's encoder, deep-fusion
    # stack and pooling (no CCABs: there is nothing to attend to) for the unimodal ablations.
    modalities: str = setting(
        "both", "Audio-only or text-only models for the unimodal ablations (default both).", choices=MODALITIES
    )
    head_dim: int = setting(256, "Hidden width of the head baseline (default 256).", low=1)
    # Per-dimension standardisation of the input features with statistics of the training
    # utterances' true frames (stored in the model, so a checkpoint carries them). The public
    # code feeds the features as they are: "none" reproduces it.
    input_norm: str = setting(
        "none",
        "Departure: standardize = z-score each feature dimension with the training fold's statistics "
        "(true frames only) before the model.",
        choices=INPUT_NORMS,
    )
    # Per-speaker (or per-session) standardisation of the audio features with the statistics of
    # each group's own utterances (fuse.model.normalise), the test speaker's included: outside
    # the model, so a checkpoint records only the choice. "none" reproduces the public code.
    speaker_norm: str = setting(
        "none",
        "Departure: speaker (or session) = standardise each audio dimension with the statistics of that "
        "speaker's (session's) own utterances, test speakers included (no labels used); takes a voice's "
        "shift out. ksr predict uses the utterance's own statistics (docs/learning.md).",
        choices=SPEAKER_NORMS,
    )
    # "fast" (fuse.model.fast_attention) computes what "plain" computes, without keeping the
    # attention maps; "plain" performs the public code's operations and is the reference.
    attention_impl: str = setting(
        "fast",
        "Attention implementation (same numbers; plain keeps the public code's operations).",
        flag="--attention",
        choices=ATTENTION_IMPLS,
    )

    # --- fidelity options: the defaults reproduce the public implementation -----------------
    positional_table: str = setting(
        "xavier",
        "Departure: sinusoidal positional tables instead of the public code's fixed random ones.",
        choices=POSITIONAL_TABLES,
    )
    pooling: str = setting(
        "all_positions", "Departure: masked = mean over the true frames/tokens only.", choices=POOLINGS
    )
    mask_interaction_self: bool = setting(
        False, "Departure: the CCAB self layer masks padded keys.", flag="--mask-ccab-self"
    )
    mask_fusion: bool = setting(False, "Departure: the deep-fusion layers mask padded keys.")
    ccab_residual: str = setting(
        "double", "Departure: single = the CCAB stack's residual is added once.", choices=CCAB_RESIDUALS
    )
    ks_renormalise: bool = setting(False, "Departure: key-sparse rows renormalised to sum to 1.")

    # --- tasks (fuse/model/tasks.py): "classes" is the paper's model, unchanged ----------------
    task: str = setting(
        "classes",
        "What the model learns: classes (the paper's model), attributes (a regression head on the fused "
        "representation for the cache's numeric attributes, e.g. activation/valence/dominance, trained "
        "with a CCC loss and selected on mean CCC), or both in one model (docs/learning.md).",
        choices=TASKS,
    )
    # The weight of the attribute loss (mean of 1 - CCC) beside the class cross-entropy under
    # task "both": loss = CE + attribute_weight * CCC loss. Kept with the model so that a
    # checkpoint says how its two heads were trained.
    attribute_weight: float = setting(
        1.0, "Weight of the attribute (CCC) loss beside the class loss under --task both (default 1).", low=0.0
    )
    # The attribute names the head predicts, in its output order: the cache's (never set by hand).
    attributes: tuple[str, ...] = ()

    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (provenance)

    def __post_init__(self) -> None:
        self.num_layers = tuple(int(n) for n in self.num_layers)  # JSON gives lists
        self.attributes = tuple(str(a) for a in self.attributes)
        self.validate()

    def validate(self) -> None:
        problems = [problem for f in cli_settings() if (problem := setting_problem(f, getattr(self, f.name)))]
        if len(self.num_layers) != 3:
            problems.append(f"num_layers must be 3 counts (unimodal, ccab, fusion), got {self.num_layers}")
        for name in ("audio_dim", "text_dim"):
            dim = getattr(self, name)
            heads_split = self.architecture == "ks-transformer" and self.num_heads >= 1
            if dim <= 0 or (heads_split and dim % self.num_heads):
                problems.append(f"{name}={dim} must be a positive multiple of num_heads={self.num_heads}")
        if self.num_classes < 2:
            problems.append(f"num_classes must be >= 2, got {self.num_classes}")
        if self.task != "classes" and self.architecture != "ks-transformer":
            problems.append(f"task {self.task} needs the ks-transformer model, not the {self.architecture} baseline")
        if self.task != "classes" and not self.attributes:
            problems.append(
                f"task {self.task} needs numeric attributes in the cache, and it has none (extract it again from a "
                f"manifest with activation/valence/dominance columns)"
            )
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["num_layers"] = list(self.num_layers)
        d["attributes"] = list(self.attributes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> ModelConfig:
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
    "standardize-input": {"input_norm": "standardize"},
}
DEPARTURES["all"] = {k: v for changes in DEPARTURES.values() for k, v in changes.items()}


# Named model sizes (``ksr train --size``): the settings each one changes from the default model.
# "default" is the public implementation's model; "small" is ``make demo``'s (one layer per stage,
# 4 heads, FFN 64, no attention-weight dropout, 512-row positional tables), which trains in
# minutes on 2 CPU cores. Options typed beside --size still win.
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "default": {},
    "small": {
        "num_layers": (1, 1, 1),
        "num_heads": 4,
        "audio_ffn_dim": 64,
        "text_ffn_dim": 64,
        "max_positions": 512,
        "attention_dropout": 0.0,
    },
}


def attention_layers(cfg: ModelConfig) -> int:
    """How many attention layers the KS-Transformer stacks (both modalities: unimodal encoders,
    CCABs of both directions, each a self and a cross layer, deep fusion); what the ksr recipe scales its learning rate by."""
    unimodal, ccabs, fusion = cfg.num_layers
    per_modality = unimodal + fusion + (2 * ccabs if cfg.modalities == "both" else 0)  # a CCAB: self + cross
    return per_modality * (2 if cfg.modalities == "both" else 1)


def cli_settings() -> list[dataclasses.Field]:
    """The fields users set from the command line, in declaration order."""
    return [f for f in dataclasses.fields(ModelConfig) if "cli" in f.metadata]


def setting_problem(f: dataclasses.Field, value: Any) -> str | None:
    """Why ``value`` is not allowed for the setting ``f`` (None when it is)."""
    rule = f.metadata["cli"]
    if rule["choices"]:
        return None if value in rule["choices"] else f"{f.name} must be one of {rule['choices']}, got {value!r}"
    for v in value if isinstance(value, tuple) else (value,):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not math.isfinite(v):
            return f"{f.name} must be a finite number, got {v}"
        low, high = rule["low"], rule["high"]
        too_low = low is not None and (v <= low if rule["low_open"] else v < low)
        too_high = high is not None and (v >= high if rule["high_open"] else v > high)
        if too_low or too_high:
            if low is not None and high is not None:
                bounds = f"in {'(' if rule['low_open'] else '['}{low:g}, {high:g}{')' if rule['high_open'] else ']'}"
            elif low is not None:
                bounds = f"{'>' if rule['low_open'] else '>='} {low:g}"
            else:
                bounds = f"{'<' if rule['high_open'] else '<='} {high:g}"
            return f"{f.name} must be {bounds}, got {v}"
    return None


def apply_departure(cfg: ModelConfig, name: str) -> ModelConfig:
    if name not in DEPARTURES:
        raise ValueError(f"unknown departure {name!r}; choose from {', '.join(DEPARTURES)}")
    return cfg.replace(**DEPARTURES[name])
