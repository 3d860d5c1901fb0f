"""Checkpoints of the public KS-Transformer implementation: key layout, size inference, conversion.

The public code saves ``{"epoch", "model": state_dict, "optimizer"}`` (keys prefixed ``module.``
when saved from DistributedDataParallel). Inside a block its tensor names equal ksr's; only the
stacks are named differently, so conversion is a rename of prefixes plus checks.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from ..model.config import ModelConfig
from ..model.model import KSTransformer
from .checkpoint import CheckpointError, describe_key_mismatch, read_torch_file, save_checkpoint

# (public prefix, ksr prefix); {i} stands for a CCAB index.
PREFIXES = [
    ("audio_self_Trans.", "audio_encoder."),
    ("text_self_Trans.", "text_encoder."),
    ("at_cross_Trans.CCABs_model.{i}.ks_trans_1.", "audio_ccabs.blocks.{i}.cross_block."),
    ("at_cross_Trans.CCABs_model.{i}.ks_trais_2.", "audio_ccabs.blocks.{i}.self_block."),
    ("ta_cross_Trans.CCABs_model.{i}.ks_trans_1.", "text_ccabs.blocks.{i}.cross_block."),
    ("ta_cross_Trans.CCABs_model.{i}.ks_trais_2.", "text_ccabs.blocks.{i}.self_block."),
    ("last_audio_self_Trans.", "audio_fusion."),
    ("last_text_self_Trans.", "text_fusion."),
    ("classifier.", "classifier."),
]


def _prefix_pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(\d+)"))


_TO_KSR = [(_prefix_pattern(official), ksr) for official, ksr in PREFIXES]
_TO_OFFICIAL = [(_prefix_pattern(ksr), official) for official, ksr in PREFIXES]


def _rename(key: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in table:
        m = pattern.match(key)
        if m:
            prefix = template.format(i=m.group(1)) if m.groups() else template
            return prefix + key[m.end() :]
    return None


def to_ksr_key(official_key: str) -> str | None:
    """The ksr name of a public-implementation tensor, or None if it belongs to no known stack."""
    return _rename(official_key, _TO_KSR)


def to_official_key(ksr_key: str) -> str:
    name = _rename(ksr_key, _TO_OFFICIAL)
    if name is None:
        raise KeyError(f"no public-implementation name for ksr key {ksr_key!r}")
    return name


def to_official_state_dict(model: KSTransformer) -> dict[str, torch.Tensor]:
    """The model's tensors under the public implementation's names (its checkpoint layout)."""
    return {to_official_key(k): v.detach().clone() for k, v in model.state_dict().items()}


def strip_module_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix DistributedDataParallel adds (all keys or none carry it)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def _count(keys: list[str], pattern: str) -> int:
    """1 + the largest index captured by ``pattern`` among ``keys`` (0 when none matches)."""
    rx = re.compile(pattern)
    idx = [int(m.group(1)) for k in keys if (m := rx.match(k))]
    return max(idx) + 1 if idx else 0


def _first_shape(state: dict[str, torch.Tensor], patterns: list[str], what: str) -> tuple[int, ...]:
    for pattern in patterns:
        rx = re.compile(pattern)
        for k, v in state.items():
            if rx.fullmatch(k):
                return tuple(v.shape)
    raise CheckpointError(f"cannot infer the {what}: missing key {patterns[0].replace(chr(92), '')}")


def infer_config(state: dict[str, torch.Tensor], num_heads: int = 8, keep_rate: float = 0.5) -> ModelConfig:
    """Dims, FFN widths, layer counts, table rows and classes from the tensor shapes.

    Heads and keep rate leave no trace in the weights and must be given.
    """
    keys = list(state)
    audio_dim, text_dim = (
        _first_shape(
            state,
            [rf"{s}_self_Trans\.query_input_norm\.weight", rf"last_{s}_self_Trans\.query_input_norm\.weight"],
            f"{s} dim",
        )[0]
        for s in ("audio", "text")
    )
    audio_ffn, text_ffn = (
        _first_shape(
            state,
            [
                rf"{s}_self_Trans\.layers\.\d+\.fc1\.weight",
                rf"last_{s}_self_Trans\.layers\.\d+\.fc1\.weight",
                rf"{c}_cross_Trans\.CCABs_model\.\d+\.ks_tra[in]s_\d\.layers\.\d+\.fc1\.weight",
            ],
            f"{s} FFN width",
        )[0]
        for s, c in (("audio", "at"), ("text", "ta"))
    )
    rows = _first_shape(
        state, [r"audio_self_Trans\.query_position", r"text_self_Trans\.query_position"], "positional table rows"
    )[0]
    num_classes = _first_shape(state, [r"classifier\.6\.weight", r"classifier\.6\.bias"], "class count")[0]
    uni = max(_count(keys, rf"{s}_self_Trans\.layers\.(\d+)\.") for s in ("audio", "text"))
    ccab = max(_count(keys, rf"{c}_cross_Trans\.CCABs_model\.(\d+)\.") for c in ("at", "ta"))
    fusion = max(_count(keys, rf"last_{s}_self_Trans\.layers\.(\d+)\.") for s in ("audio", "text"))
    try:
        return ModelConfig(
            audio_dim=audio_dim,
            text_dim=text_dim,
            audio_ffn_dim=audio_ffn,
            text_ffn_dim=text_ffn,
            num_layers=(uni, ccab, fusion),
            num_heads=num_heads,
            keep_rate=keep_rate,
            num_classes=num_classes,
            max_positions=rows,
        )
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def model_from_official_state(
    state: dict[str, torch.Tensor], num_heads: int = 8, keep_rate: float = 0.5, source: str = "checkpoint"
) -> KSTransformer:
    """A ksr model holding exactly the given public-implementation tensors (checked key by key)."""
    state = strip_module_prefix(dict(state))
    cfg = infer_config(state, num_heads, keep_rate)
    model = KSTransformer(cfg)
    expected = {to_official_key(k): tuple(v.shape) for k, v in model.state_dict().items()}
    problems = describe_key_mismatch(expected, {k: tuple(v.shape) for k, v in state.items()})
    if problems:
        raise CheckpointError(
            f"{source}: does not match the public KS-Transformer layout for {describe_public_model(cfg)}: {problems}"
        )
    model.load_state_dict({to_ksr_key(k): v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def describe_public_model(cfg: ModelConfig) -> str:
    return (
        f"dims {cfg.audio_dim}/{cfg.text_dim}, FFN {cfg.audio_ffn_dim}/{cfg.text_ffn_dim}, "
        f"layers {tuple(cfg.num_layers)}, {cfg.num_classes} classes"
    )


def convert_official(
    src: str | os.PathLike, dst: str | os.PathLike, num_heads: int = 8, keep_rate: float = 0.5
) -> KSTransformer:
    """Read a public-implementation checkpoint and write the equivalent ksr checkpoint."""
    raw = read_torch_file(src)
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        state, epoch = raw["model"], raw.get("epoch")
    elif isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state, epoch = raw, None  # a bare state_dict
    else:
        raise CheckpointError(f"{src}: expected {{'epoch', 'model': state_dict, 'optimizer'}} or a bare state_dict")
    model = model_from_official_state(state, num_heads, keep_rate, source=str(src))
    meta = {"converted_from": str(Path(src).resolve()), "source": "public KS-Transformer implementation"}
    if isinstance(epoch, int):
        meta["epoch"] = epoch
    save_checkpoint(dst, model, meta)
    return model
