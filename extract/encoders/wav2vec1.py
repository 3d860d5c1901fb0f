"""The paper's audio encoder: fairseq wav2vec 1.0, as a native port (fairseq is not needed).

The features are ``feature_aggregator(feature_extractor(wav))`` of a fairseq ``wav2vec``
checkpoint (``wav2vec_large.pt``: 512-dim, 100 frames/s). The model is built from the
checkpoint's own settings (``args``, an ``argparse.Namespace``, or the ``model`` section of a
newer fairseq ``cfg``) and its weights are loaded under fairseq's key names with strict checks.

The computation, as fairseq's ``fairseq/models/wav2vec/wav2vec.py`` does it at inference:

- feature extractor: for each ``(dim, kernel, stride)`` of ``conv_feature_layers``, a Conv1d
  without bias, a group norm with ONE group (statistics over all channels and all time steps of
  the utterance, per-channel affine unless ``non_affine_group_norm``), computed in float32, then
  the activation (ReLU, or GELU when ``activation == "gelu"``). With ``skip_connections_feat``,
  a layer whose input and output widths agree adds its input, subsampled in time with step
  ``T_in // T_out`` and cut to ``T_out``, and scales the sum by ``sqrt(residual_scale)``. Then,
  with ``log_compression``, ``log(|x| + 1)``.
- aggregator (``aggregator == "cnn"``): for each ``(dim, kernel, 1)`` of
  ``conv_aggregator_layers``, causal left padding of ``kernel - 1`` steps (replicating the first
  frame, or zeros with ``agg_zero_pad``), a Conv1d (bias unless ``no_conv_bias``), the same
  one-group float32 norm and the activation. With ``skip_connections_agg`` the layer's input
  (through a bias-free 1x1 conv when the widths differ) is added and the sum scaled by
  ``sqrt(residual_scale)``.
- dropout is off at inference; the prediction head, ``project_features`` and ``offset`` serve
  the training loss only and do not touch these features.

Because the group norms take their statistics over the whole utterance, zero padding would
change every frame: utterances are encoded one at a time, or together only when they have
exactly the same number of samples (no padding at all).

The checkpoint is read with ``torch.load(weights_only=True)``: tensors, plain containers,
``argparse.Namespace`` and numpy scalars are allowed, nothing else; no pickled code runs.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ...common import SAMPLE_RATE, sha256_file
from .base import AudioEncoder, EncoderError, placement

#: The environment variable the ``paper-audio`` preset reads the checkpoint path from.
PAPER_ENV = "KSR_WAV2VEC_LARGE"
KIND = "w2v1"

# Defaults for settings a checkpoint does not record: those of every fairseq version (old
# checkpoints predate ``activation`` and ``vq_type``). ``log_compression`` and
# ``skip_connections_agg`` have no such default (False in fairseq 0.9's base architecture,
# True in 0.12's Wav2VecConfig) and must be recorded, as are the layer lists.
_REQUIRED = ("conv_feature_layers", "conv_aggregator_layers", "log_compression", "skip_connections_agg")
_DEFAULTS: dict[str, Any] = {
    "aggregator": "cnn",
    "activation": "relu",
    "skip_connections_feat": False,
    "residual_scale": 0.5,
    "agg_zero_pad": False,
    "no_conv_bias": False,
    "non_affine_group_norm": False,
    "vq_type": "none",
    "encoder": "cnn",
}
_BOOLS = (
    "log_compression",
    "skip_connections_feat",
    "skip_connections_agg",
    "agg_zero_pad",
    "no_conv_bias",
    "non_affine_group_norm",
)
_ARCHES = ("wav2vec", "audio_cpc")  # fairseq renamed audio_cpc to wav2vec (old checkpoints)
_MAX_LAYERS = 256
_NORM_EPS = 1e-5  # torch's GroupNorm default, which fairseq's Fp32GroupNorm keeps


# --------------------------------------------------------------------------------------------
# Settings


def _parse_layers(text: Any, name: str) -> tuple[tuple[int, int, int], ...]:
    """A fairseq layer list such as ``"[(512, 10, 5)] + [(512, 4, 2)] * 3"``, read without
    ``eval``: only list/tuple literals of integers joined by ``+`` and ``* <int>``."""
    if not isinstance(text, str):
        raise EncoderError(
            f"wav2vec checkpoint: {name} must be a string like '[(512, 10, 5), ...]', got {type(text).__name__}"
        )
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise EncoderError(f"wav2vec checkpoint: {name} = {text!r} is not a layer list") from None

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
                return left + right
            if isinstance(node.op, ast.Mult):
                seq, count = (left, right) if isinstance(left, list) else (right, left)
                if isinstance(seq, list) and type(count) is int and 0 <= count <= _MAX_LAYERS:
                    return seq * count
        raise EncoderError(
            f"wav2vec checkpoint: {name} = {text!r} is not a plain layer list "
            "(list of (dim, kernel, stride) tuples, '+' and '* n' only)"
        )

    layers = value(tree.body)
    if (
        not isinstance(layers, list)
        or not layers
        or len(layers) > _MAX_LAYERS
        or not all(isinstance(t, tuple) and len(t) == 3 and all(type(v) is int and v > 0 for v in t) for t in layers)
    ):
        raise EncoderError(
            f"wav2vec checkpoint: {name} = {text!r} must be a non-empty list of "
            "(dim, kernel, stride) tuples of positive integers"
        )
    return tuple(layers)


@dataclass(frozen=True)
class Wav2Vec1Config:
    """What decides ``feature_aggregator(feature_extractor(wav))`` of a fairseq wav2vec model."""

    feature_layers: tuple[tuple[int, int, int], ...]
    aggregator_layers: tuple[tuple[int, int, int], ...]
    log_compression: bool = True
    skip_connections_feat: bool = False
    skip_connections_agg: bool = True
    residual_scale: float = 0.5
    agg_zero_pad: bool = False
    conv_bias: bool = True
    affine_norm: bool = True
    activation: str = "relu"

    @property
    def hop(self) -> int:
        return math.prod(s for _, _, s in self.feature_layers)

    @property
    def dim(self) -> int:
        return self.aggregator_layers[-1][0]

    def num_frames(self, num_samples: int) -> int:
        """Frames out of ``num_samples`` samples: each strided conv, no padding (the aggregator
        keeps the length)."""
        n = int(num_samples)
        for _, kernel, stride in self.feature_layers:
            n = (n - kernel) // stride + 1 if n >= kernel else 0
        return n

    @property
    def min_samples(self) -> int:
        """The shortest input that gives one frame."""
        need = 1
        for _, kernel, stride in reversed(self.feature_layers):
            need = (need - 1) * stride + kernel
        return need

    @classmethod
    def from_args(cls, args: Any) -> Wav2Vec1Config:
        """From a checkpoint's ``args`` (Namespace) or ``cfg["model"]`` (dict or Namespace).

        Settings that change the features are read (see ``_DEFAULTS`` and ``_REQUIRED`` for
        absent ones); values this port does not implement are refused, naming the setting."""
        if isinstance(args, argparse.Namespace):
            get = vars(args)
        elif isinstance(args, Mapping):
            get = args
        else:
            raise EncoderError(
                f"wav2vec checkpoint: the model settings are a {type(args).__name__}, not a Namespace or a dict"
            )

        def setting(name: str) -> Any:
            return get[name] if get.get(name) is not None else _DEFAULTS.get(name)

        arch = get.get("arch") or get.get("_name")
        if arch is not None and arch not in _ARCHES:
            raise EncoderError(
                f"wav2vec checkpoint: arch {arch!r} is not fairseq's wav2vec 1.0 "
                "('wav2vec'); wav2vec 2.0 / HuBERT checkpoints go through hf:"
            )
        for name in _REQUIRED:
            if get.get(name) is None:
                raise EncoderError(
                    f"wav2vec checkpoint: its settings lack {name}, which "
                    "decides the features (and whose default differs between "
                    "fairseq versions)"
                )
        for name, supported in (
            ("aggregator", ("cnn",)),
            ("encoder", ("cnn",)),
            ("vq_type", ("none",)),
            ("activation", ("relu", "gelu")),
        ):
            if setting(name) not in supported:
                why = {
                    "aggregator": "only the convolutional aggregator is ported",
                    "vq_type": "vq-wav2vec quantizes between the feature extractor and the "
                    "aggregator, which this port does not do",
                }.get(name, "not ported")
                raise EncoderError(
                    f"wav2vec checkpoint: unsupported {name}={setting(name)!r} "
                    f"({why}; supported: {', '.join(supported)})"
                )
        flags = {}
        for name in _BOOLS:
            v = setting(name)
            if type(v) is not bool and not (type(v) is int and v in (0, 1)):
                raise EncoderError(f"wav2vec checkpoint: unsupported {name}={v!r} (expected true or false)")
            flags[name] = bool(v)
        scale = setting("residual_scale")
        if type(scale) not in (int, float) or not math.isfinite(scale) or scale < 0:
            raise EncoderError(f"wav2vec checkpoint: unsupported residual_scale={scale!r} (expected a number >= 0)")
        features = _parse_layers(get["conv_feature_layers"], "conv_feature_layers")
        aggregator = _parse_layers(get["conv_aggregator_layers"], "conv_aggregator_layers")
        strided = [i for i, (_, _, s) in enumerate(aggregator) if s != 1]
        if strided:
            raise EncoderError(
                "wav2vec checkpoint: unsupported conv_aggregator_layers with "
                f"stride {aggregator[strided[0]][2]} (layer {strided[0]}): the "
                "causal aggregator is defined for stride 1"
            )
        return cls(
            feature_layers=features,
            aggregator_layers=aggregator,
            log_compression=flags["log_compression"],
            skip_connections_feat=flags["skip_connections_feat"],
            skip_connections_agg=flags["skip_connections_agg"],
            residual_scale=float(scale),
            agg_zero_pad=flags["agg_zero_pad"],
            conv_bias=not flags["no_conv_bias"],
            affine_norm=not flags["non_affine_group_norm"],
            activation=setting("activation"),
        )


# --------------------------------------------------------------------------------------------
# The model


class _Block(nn.Module):
    """One conv layer: conv, one-group norm (float32), activation; ``proj`` maps the residual."""

    def __init__(self, n_in: int, n_out: int, kernel: int, stride: int, *, bias: bool, affine: bool, proj: bool):
        super().__init__()
        self.conv = nn.Conv1d(n_in, n_out, kernel, stride=stride, bias=bias)
        self.norm = nn.GroupNorm(1, n_out, eps=_NORM_EPS, affine=affine)
        self.proj = nn.Conv1d(n_in, n_out, 1, bias=False) if proj else None

    def normed(self, x: torch.Tensor) -> torch.Tensor:
        """The norm in float32 whatever the model runs in, cast back (as Fp32GroupNorm)."""
        w, b = self.norm.weight, self.norm.bias
        y = F.group_norm(
            x.float(), 1, None if w is None else w.float(), None if b is None else b.float(), self.norm.eps
        )
        return y.to(x.dtype)


class Wav2Vec1(nn.Module):
    """``forward(wav (B, T)) -> (B, dim, frames)``: fairseq's
    ``feature_aggregator(feature_extractor(wav))``."""

    def __init__(self, config: Wav2Vec1Config):
        super().__init__()
        self.config = config
        self.act = nn.GELU() if config.activation == "gelu" else nn.ReLU()
        self.residual_factor = math.sqrt(config.residual_scale)
        self.extractor = nn.ModuleList()
        width = 1
        for dim, kernel, stride in config.feature_layers:
            self.extractor.append(_Block(width, dim, kernel, stride, bias=False, affine=config.affine_norm, proj=False))
            width = dim
        self.aggregator = nn.ModuleList()
        for dim, kernel, stride in config.aggregator_layers:
            self.aggregator.append(
                _Block(
                    width,
                    dim,
                    kernel,
                    stride,
                    bias=config.conv_bias,
                    affine=config.affine_norm,
                    proj=config.skip_connections_agg and width != dim,
                )
            )
            width = dim

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """The feature extractor: ``(B, T)`` samples -> ``(B, C, frames)``."""
        x = wav.unsqueeze(1)
        for block in self.extractor:
            y = self.act(block.normed(block.conv(x)))
            if self.config.skip_connections_feat and y.shape[1] == x.shape[1]:
                step = x.shape[2] // y.shape[2]
                y = (y + x[:, :, ::step][:, :, : y.shape[2]]) * self.residual_factor
            x = y
        if self.config.log_compression:
            x = torch.log(x.abs() + 1)
        return x

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """The causal conv aggregator: ``(B, C, frames)`` -> ``(B, dim, frames)``."""
        for block in self.aggregator:
            left = block.conv.kernel_size[0] - 1
            if self.config.agg_zero_pad:
                padded = F.pad(x, (left, 0))
            else:
                padded = torch.cat([x[:, :, :1].expand(-1, -1, left), x], dim=2)
            y = self.act(block.normed(block.conv(padded)))
            if self.config.skip_connections_agg:
                residual = x if block.proj is None else block.proj(x)
                y = (y + residual) * self.residual_factor
            x = y
        return x

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.aggregate(self.features(wav))


# --------------------------------------------------------------------------------------------
# fairseq key names

# (fairseq pattern, ours) for the weights the features use; \1 is the layer index.
_KEY_MAP = (
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.", r"extractor.\1.conv."),
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.", r"extractor.\1.norm."),
    (r"feature_aggregator\.conv_layers\.(\d+)\.1\.", r"aggregator.\1.conv."),
    (r"feature_aggregator\.conv_layers\.(\d+)\.3\.", r"aggregator.\1.norm."),
    (r"feature_aggregator\.residual_proj\.(\d+)\.", r"aggregator.\1.proj."),
)
_OURS_MAP = (
    (r"extractor\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"extractor\.(\d+)\.norm\.", r"feature_extractor.conv_layers.\1.2."),
    (r"aggregator\.(\d+)\.conv\.", r"feature_aggregator.conv_layers.\1.1."),
    (r"aggregator\.(\d+)\.norm\.", r"feature_aggregator.conv_layers.\1.3."),
    (r"aggregator\.(\d+)\.proj\.", r"feature_aggregator.residual_proj.\1."),
)
#: Weights of the training objective only (prediction head, projected targets): not features.
_TRAINING_ONLY = ("wav2vec_predictions.", "project_features.")


def _rename(key: str, table) -> str | None:
    for pattern, repl in table:
        m = re.match(pattern, key)
        if m:
            return m.expand(repl) + key[m.end() :]
    return None


def to_fairseq_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict under fairseq's ``Wav2VecModel`` key names (for writing checkpoints)."""
    out = {}
    for key, value in state.items():
        name = _rename(key, _OURS_MAP)
        if name is None:
            raise KeyError(f"not a wav2vec 1.0 weight: {key}")
        out[name] = value
    return out


def from_fairseq_keys(
    state: Mapping[str, Any], expected: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """fairseq's weights under our names, checked against ``expected`` (our state dict):
    every weight present, none unknown, shapes equal; training-only weights are dropped."""
    ours: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        name = _rename(key, _KEY_MAP)
        if name is None:
            if not key.startswith(_TRAINING_ONLY):
                unknown.append(key)
            continue
        if name not in expected:
            unknown.append(key)
            continue
        if not isinstance(value, torch.Tensor):
            raise EncoderError(f"{source}: weight {key} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(expected[name].shape):
            raise EncoderError(
                f"{source}: weight {key} has shape {tuple(value.shape)} where the "
                f"checkpoint's settings give {tuple(expected[name].shape)}"
            )
        ours[name] = value
    if unknown:
        raise EncoderError(
            f"{source}: {len(unknown)} weights that the checkpoint's settings do "
            f"not account for: {', '.join(sorted(unknown)[:5])}" + (" ..." if len(unknown) > 5 else "")
        )
    missing = [k for k in expected if k not in ours]
    if missing:
        names = [to_fairseq_keys({k: expected[k]}).popitem()[0] for k in missing]
        raise EncoderError(
            f"{source}: {len(missing)} weights missing (the features would be "
            f"random): {', '.join(names[:5])}" + (" ..." if len(names) > 5 else "")
        )
    return ours


# --------------------------------------------------------------------------------------------
# Reading a checkpoint without running pickled code


def _allowed_globals() -> list:
    """What a fairseq checkpoint may hold besides tensors and plain containers: its settings
    (``argparse.Namespace``) and numpy scalars in its training state (losses)."""
    allowed: list = [argparse.Namespace]
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed += [
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        (multiarray.scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
            if hasattr(dtypes, name):
                allowed.append(getattr(dtypes, name))
    return allowed


def read_fairseq_checkpoint(path: str | os.PathLike) -> tuple[Any, dict[str, torch.Tensor]]:
    """``(model settings, fairseq state dict)`` of a fairseq wav2vec checkpoint file.

    Loaded with ``weights_only=True`` and only :func:`_allowed_globals` added: a checkpoint
    holding any other pickled object (classes, functions, omegaconf objects) is refused with
    the object's name, and nothing in it runs."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EncoderError(f"wav2vec checkpoint not found: {path}") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure is one message
        text = " ".join(str(err).split())
        m = re.search(r"GLOBAL (\S+)", text) or re.search(r"(?:for|got) (<[^>]+>)", text)
        if m:
            raise EncoderError(
                f"{path}: refused to load: it holds pickled object {m.group(1)}, which ksr does "
                "not unpickle (only tensors, plain data, argparse.Namespace and numpy scalars). "
                "If you trust the file, keep just its settings and weights, e.g. "
                "c = torch.load(p, weights_only=False); "
                "torch.save({'args': c['args'], 'model': c['model']}, out)"
            ) from None
        raise EncoderError(f"{path}: not a readable torch checkpoint: {text[:300]}") from None
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model"), Mapping):
        raise EncoderError(
            f"{path}: not a fairseq checkpoint (expected a dict with 'model' weights and 'args' or 'cfg' settings)"
        )
    settings = ckpt.get("args")
    if settings is None:
        cfg = ckpt.get("cfg")
        if isinstance(cfg, argparse.Namespace):
            cfg = vars(cfg)
        settings = cfg.get("model") if isinstance(cfg, Mapping) else None
    if settings is None:
        raise EncoderError(f"{path}: the checkpoint has no model settings ('args', or 'cfg' with a 'model' section)")
    return settings, dict(ckpt["model"])


def file_digest(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of the checkpoint file's bytes."""
    return "sha256:" + sha256_file(path)


def build_wav2vec1(path: str | os.PathLike) -> Wav2Vec1:
    """The port with a checkpoint's weights, in eval mode on the CPU in float32."""
    settings, state = read_fairseq_checkpoint(path)
    config = Wav2Vec1Config.from_args(settings)
    model = Wav2Vec1(config)
    ours = from_fairseq_keys(state, model.state_dict(), source=str(path))
    model.load_state_dict({k: v.float() for k, v in ours.items()}, strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------
# The encoder


class Wav2Vec1Encoder(AudioEncoder):
    """fairseq wav2vec 1.0 features (``feature_aggregator(feature_extractor(wav))``)."""

    model_type = "wav2vec"
    #: Most samples run in one forward pass (same-length utterances only, see module doc).
    max_batch_samples = 1_600_000

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        name: str | None = None,
    ):
        given = str(path)
        path = Path(os.path.expanduser(given))
        if not path.is_file():
            raise EncoderError(f"wav2vec checkpoint not found: {given}")
        model = build_wav2vec1(path)
        self.device, self.dtype = placement(device, dtype)
        self.model = model.to(device=self.device, dtype=self.dtype)
        config = model.config
        self.config = config
        self.dim = config.dim
        self.num_layers = len(config.aggregator_layers)
        self.layer = "aggregator"  # type: ignore[assignment]  # free text in the cache
        self.frame_rate = SAMPLE_RATE / config.hop
        self.min_samples = config.min_samples
        self.digest = file_digest(path)
        self.spec = f"{KIND}:{given}"
        self.name = name or self.spec

    def num_frames(self, num_samples: int) -> int:
        return self.config.num_frames(num_samples)

    @torch.inference_mode()
    def encode(self, wavs: Sequence[np.ndarray]) -> list[torch.Tensor]:
        wavs = self.checked(wavs)
        out: list[torch.Tensor | None] = [None] * len(wavs)
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(wavs):
            by_length.setdefault(len(w), []).append(i)
        for length, items in by_length.items():
            per_pass = max(1, self.max_batch_samples // length)
            n = self.num_frames(length)
            for start in range(0, len(items), per_pass):
                chunk = items[start : start + per_pass]
                batch = torch.from_numpy(np.stack([wavs[i] for i in chunk]))
                feats = self.model(batch.to(device=self.device, dtype=self.dtype))
                if feats.shape[2] != n:  # the conv formula and the model must agree
                    raise EncoderError(f"{self.name} gave {feats.shape[2]} frames where its conv formula says {n}")
                for i, f in zip(chunk, feats, strict=True):
                    out[i] = f.transpose(0, 1).float().cpu()
        return out  # type: ignore[return-value]


def load_wav2vec1(spec, *, device=None, dtype=None, tiny_root=None) -> Wav2Vec1Encoder:
    """The loader behind ``w2v1:<path>`` and ``paper-audio`` (see ``spec.py``)."""
    if spec.layer is not None or spec.revision is not None:
        raise EncoderError(f"{KIND}: takes no @layer or @revision (its output is the aggregator's, as in the paper)")
    source = spec.source
    if source == f"${PAPER_ENV}":
        source = os.environ.get(PAPER_ENV, "")
        if not source:
            raise EncoderError(
                f"paper-audio needs the path of fairseq's wav2vec_large.pt in "
                f"${PAPER_ENV} (or use {KIND}:/path/to/wav2vec_large.pt)"
            )
    return Wav2Vec1Encoder(source, device=device, dtype=dtype)


__all__ = [
    "Wav2Vec1",
    "Wav2Vec1Config",
    "Wav2Vec1Encoder",
    "build_wav2vec1",
    "read_fairseq_checkpoint",
    "to_fairseq_keys",
    "from_fairseq_keys",
    "load_wav2vec1",
    "PAPER_ENV",
]
