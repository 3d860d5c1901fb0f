"""emotion2vec without FunASR: ``e2v:<folder or model.pt>``, and ``e2v-plus-large``.

emotion2vec (and emotion2vec+) is a data2vec 2.0 audio model released as FunASR checkpoint
folders: ``model.pt`` (the weights) and ``config.yaml`` (``model: Emotion2vec`` and its
``model_conf``). This module builds the same computation in plain torch from ``model_conf`` and
loads the weights under FunASR's names, so FunASR (and its dependencies) are never needed. The
features are what FunASR returns with ``granularity="frame"``: the last layer, 50 frames/s,
``embed_dim`` wide (768 base, 1024 large).

The computation, for one utterance of ``n`` samples (16 kHz):

1. ``model_conf.normalize``: the waveform is normalised over the whole utterance (mean 0,
   variance 1, eps 1e-5).
2. Convolutional front end ``feature_encoder_spec`` (``[(512, 10, 5)] + [(512, 3, 2)] * 4 +
   [(512, 2, 2)] * 2``: one frame per 320 samples), convolutions without bias, each followed by
   a layer norm over channels (``extractor_mode: layer_norm``; ``default``: a group norm with one
   group per channel after the first convolution only) and GELU.
3. ``project_features``: layer norm, then a linear map to ``embed_dim``.
4. Relative positions: ``x + P(x)``, ``P`` a stack of ``conv_pos_depth`` grouped convolutions of
   width ``max(3, conv_pos_width // conv_pos_depth)`` (same padding; an even width drops the
   last step), each followed by a layer norm without scale and GELU.
5. ``num_extra_tokens`` learned vectors are put in front of the frames.
6. ``prenet_depth`` Transformer blocks (the modality's context encoder; a layer norm first when
   the blocks are post-norm), then ``depth`` more blocks. Each post-norm block:
   ``x = norm1(x + attn(x))``, ``x = norm2(x + mlp(x))``; attention logits take an ALiBi bias
   ``-slope_h |i - j|`` (zero on the extra tokens) times a learned non-negative scale (one per
   head, per layer or shared, as configured). GELU MLP of ``mlp_ratio``.
7. The extra tokens are dropped: ``ceil``-free frame count, the front end's
   ``(n - k) // s + 1`` per layer.

Settings no released checkpoint uses (pre-norm blocks, learned ALiBi tables, a fixed
positional encoder) are refused by name. Weights: a weight the settings need and the file
lacks, or one the computation does not account for, stops loading, except the pre-training
decoder (``modality_encoders.AUDIO.decoder.*``), the EMA teacher and the emotion classifier
head (``proj.*``), which do not take part in the features.

Safe loading: ``model.pt`` is read with ``torch.load(weights_only=True)``; ``config.yaml`` with
``yaml.safe_load``.

Batching: FunASR encodes one utterance at a time without a padding mask, and the normalisation
of step 1, the positional convolutions and the attention all see the whole input, so padding
would change the features: ``encode`` runs utterances one at a time (exactly FunASR's result).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...common import sha256_file
from .base import SAMPLE_RATE, AudioEncoder, EncoderError, placement

KIND = "e2v"
#: The recommended variant (emotion2vec+ large, ~300 M); its folder comes from this variable.
PLUS_LARGE_ENV = "KSR_EMOTION2VEC_PLUS_LARGE"
_IGNORED_PREFIXES = ("modality_encoders.AUDIO.decoder.", "proj.", "_ema.", "ema.")


def _literal_layers(text: str) -> list[tuple[int, int, int]]:
    """``feature_encoder_spec``, e.g. ``[(512, 10, 5)] + [(512, 3, 2)] * 4``, read as list
    literals joined by ``+`` and repeated by ``* n``: never ``eval``ed."""
    import ast

    layers: list[tuple[int, int, int]] = []
    for part in str(text).split("+"):
        part = part.strip()
        times = 1
        if "*" in part:
            part, _, count = part.rpartition("*")
            part, times = part.strip(), int(count.strip())
        try:
            items = ast.literal_eval(part)
        except (ValueError, SyntaxError):
            raise EncoderError(
                f"{KIND}: feature_encoder_spec {text!r} is not a list of (dim, kernel, stride)"
            ) from None
        if not isinstance(items, list) or not all(
            isinstance(t, tuple) and len(t) == 3 and all(isinstance(v, int) for v in t) for t in items
        ):
            raise EncoderError(f"{KIND}: feature_encoder_spec {text!r} is not a list of (dim, kernel, stride)")
        layers += items * times
    return layers


@dataclass(frozen=True)
class E2VConfig:
    """The settings of ``model_conf`` that decide the features."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    norm_eps: float
    norm_affine: bool
    normalize: bool
    conv_layers: tuple[tuple[int, int, int], ...]
    extractor_mode: str
    conv_pos_width: int
    conv_pos_depth: int
    conv_pos_groups: int
    conv_pos_pre_ln: bool
    prenet_depth: int
    num_extra_tokens: int
    use_alibi: bool
    alibi_heads: int
    alibi_scale_layers: int  # 1 or prenet_depth + depth
    alibi_scale_heads: int  # 1 or alibi_heads

    @classmethod
    def from_model_conf(cls, conf: Mapping[str, Any]) -> E2VConfig:
        audio = ((conf.get("modalities") or {}).get("audio")) or {}
        if not audio:
            raise EncoderError(f"{KIND}: config.yaml has no model_conf.modalities.audio")

        def need(d, key, where):
            if key not in d or d[key] is None:
                raise EncoderError(f"{KIND}: config.yaml lacks {where}.{key}")
            return d[key]

        refuse = {
            "layer_norm_first": bool(conf.get("layer_norm_first", False)),
            "modalities.audio.learned_alibi": bool(audio.get("learned_alibi", False)),
        }
        for key, on in refuse.items():
            if on:
                raise EncoderError(f"{KIND}: {key}: true is not supported (no released emotion2vec checkpoint uses it)")
        mode = str(audio.get("extractor_mode", "layer_norm"))
        if mode not in ("layer_norm", "default"):
            raise EncoderError(f"{KIND}: extractor_mode {mode!r}: layer_norm or default only")
        use_alibi = bool(audio.get("use_alibi_encoder", False))
        depth = int(need(conf, "depth", "model_conf"))
        prenet = int(audio.get("prenet_depth", 0))
        heads = int(need(conf, "num_heads", "model_conf"))
        alibi_heads = int(audio.get("num_alibi_heads", heads)) if use_alibi else 0
        if use_alibi and not 1 <= alibi_heads <= heads:
            raise EncoderError(f"{KIND}: num_alibi_heads {alibi_heads} is not within 1..{heads}")
        return cls(
            embed_dim=int(need(conf, "embed_dim", "model_conf")),
            depth=depth,
            num_heads=heads,
            mlp_ratio=float(conf.get("mlp_ratio", 4.0)),
            norm_eps=float(conf.get("norm_eps", 1e-5)),
            norm_affine=bool(conf.get("norm_affine", True)),
            normalize=bool(conf.get("normalize", False)),
            conv_layers=tuple(_literal_layers(need(audio, "feature_encoder_spec", "modalities.audio"))),
            extractor_mode=mode,
            conv_pos_width=int(audio.get("conv_pos_width", 95)),
            conv_pos_depth=int(audio.get("conv_pos_depth", 5)),
            conv_pos_groups=int(audio.get("conv_pos_groups", 16)),
            conv_pos_pre_ln=bool(audio.get("conv_pos_pre_ln", False)),
            prenet_depth=prenet,
            num_extra_tokens=int(audio.get("num_extra_tokens", 0)),
            use_alibi=use_alibi,
            alibi_heads=alibi_heads,
            alibi_scale_layers=(prenet + depth) if audio.get("learned_alibi_scale_per_layer") else 1,
            alibi_scale_heads=alibi_heads if audio.get("learned_alibi_scale_per_head") else 1,
        )


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi slopes: for a power of two ``h``, ``2^(-8 i / h)``, ``i = 1..h``; otherwise those
    of the power of two below, then every other slope of twice that power."""

    def power_of_two(n: int) -> list[float]:
        first = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [first ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_two(heads)
    below = 2 ** math.floor(math.log2(heads))
    return power_of_two(below) + alibi_slopes(2 * below)[0::2][: heads - below]


class _Block(nn.Module):
    """A post-norm Transformer block with optional additive attention bias."""

    def __init__(self, c: E2VConfig):
        super().__init__()
        dim = c.embed_dim
        self.heads = c.num_heads
        self.norm1 = nn.LayerNorm(dim, eps=c.norm_eps, elementwise_affine=c.norm_affine)
        self.norm2 = nn.LayerNorm(dim, eps=c.norm_eps, elementwise_affine=c.norm_affine)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim)
        self.attn.proj = nn.Linear(dim, dim)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, int(dim * c.mlp_ratio))
        self.mlp.fc2 = nn.Linear(int(dim * c.mlp_ratio), dim)

    def attention(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads
        q, k, v = self.attn.qkv(x).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        logits = (q * (d // h) ** -0.5) @ k.transpose(-2, -1)
        if bias is not None:  # in float32, on the first heads
            logits = logits.float()
            logits[:, : bias.shape[1]] = logits[:, : bias.shape[1]] + bias
        weights = logits.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
        return self.attn.proj((weights @ v).transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = self.norm1(x + self.attention(x, bias))
        return self.norm2(x + self.mlp.fc2(F.gelu(self.mlp.fc1(x))))


class Emotion2Vec(nn.Module):
    """The feature path of FunASR's Emotion2vec (module names follow FunASR's weight names via
    :func:`from_funasr_keys`)."""

    def __init__(self, c: E2VConfig):
        super().__init__()
        self.config = c
        dims = [1] + [d for d, _, _ in c.conv_layers]
        self.convs = nn.ModuleList(
            nn.Conv1d(dims[i], d, k, stride=s, bias=False) for i, (d, k, s) in enumerate(c.conv_layers)
        )
        if c.extractor_mode == "layer_norm":
            self.conv_norms = nn.ModuleList(nn.LayerNorm(d) for d, _, _ in c.conv_layers)
        else:
            self.conv_norms = nn.ModuleList([nn.GroupNorm(dims[1], dims[1])])
        last = dims[-1]
        self.project_norm = nn.LayerNorm(last)
        self.project = nn.Linear(last, c.embed_dim)
        self.pos_pre_norm = nn.LayerNorm(c.embed_dim) if c.conv_pos_pre_ln else None
        width = max(3, c.conv_pos_width // c.conv_pos_depth)
        self.pos_width = width
        self.pos_convs = nn.ModuleList(
            nn.Conv1d(c.embed_dim, c.embed_dim, width, padding=width // 2, groups=c.conv_pos_groups)
            for _ in range(c.conv_pos_depth)
        )
        self.extra_tokens = (
            nn.Parameter(torch.zeros(1, c.num_extra_tokens, c.embed_dim)) if c.num_extra_tokens > 0 else None
        )
        self.alibi_scale = (
            nn.Parameter(torch.ones(c.alibi_scale_layers, 1, c.alibi_scale_heads, 1, 1)) if c.use_alibi else None
        )
        self.prenet = nn.ModuleList(_Block(c) for _ in range(c.prenet_depth))
        self.prenet_norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps, elementwise_affine=c.norm_affine)
        self.blocks = nn.ModuleList(_Block(c) for _ in range(c.depth))

    def num_frames(self, num_samples: int) -> int:
        n = num_samples
        for _, k, s in self.config.conv_layers:
            n = (n - k) // s + 1
            if n <= 0:
                return 0
        return n

    def _front_end(self, wav: torch.Tensor) -> torch.Tensor:
        """(1, n) samples -> (1, frames, embed_dim), before the Transformer blocks."""
        c = self.config
        x = wav[:, None, :]
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if c.extractor_mode == "layer_norm":  # over channels, in float32
                norm = self.conv_norms[i]
                x = (
                    F.layer_norm(
                        x.transpose(1, 2).float(),
                        norm.normalized_shape,
                        norm.weight.float(),
                        norm.bias.float(),
                        norm.eps,
                    )
                    .transpose(1, 2)
                    .to(x.dtype)
                )
            elif i == 0:
                norm = self.conv_norms[0]
                x = F.group_norm(x.float(), norm.num_groups, norm.weight.float(), norm.bias.float(), norm.eps).to(
                    x.dtype
                )
            x = F.gelu(x)
        x = self.project(self.project_norm(x.transpose(1, 2)))
        pos = self.pos_pre_norm(x) if self.pos_pre_norm is not None else x
        pos = pos.transpose(1, 2)
        for conv in self.pos_convs:
            pos = conv(pos)
            if self.pos_width % 2 == 0:
                pos = pos[:, :, :-1]
            pos = F.gelu(F.layer_norm(pos.transpose(1, 2), (pos.shape[1],)).transpose(1, 2))
        return x + pos.transpose(1, 2)

    def _alibi(self, frames: int, device) -> torch.Tensor | None:
        """The (1, heads, T, T) bias before scaling, zero rows and columns for extra tokens."""
        c = self.config
        if not c.use_alibi:
            return None
        slopes = torch.tensor(alibi_slopes(c.alibi_heads), dtype=torch.float32, device=device)
        steps = torch.arange(frames, device=device)
        distance = -(steps[None, :] - steps[:, None]).abs().float()
        bias = (slopes[:, None, None] * distance[None])[None]
        e = c.num_extra_tokens
        return F.pad(bias, (e, 0, e, 0)) if e else bias

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """(1, n) samples -> (1, frames, embed_dim): the last layer, extra tokens dropped."""
        c = self.config
        if c.normalize:
            wav = F.layer_norm(wav, wav.shape[-1:])
        x = self._front_end(wav)
        frames = x.shape[1]
        bias = self._alibi(frames, x.device)
        scales: list[torch.Tensor | None] = [None] * (c.prenet_depth + c.depth)
        if bias is not None:
            scale = self.alibi_scale.float().clamp_min(0)
            if scale.shape[0] == 1:
                bias = bias * scale[0]
            else:
                scales = list(scale)
        if self.extra_tokens is not None:
            x = torch.cat([self.extra_tokens.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = self.prenet_norm(x)
        for i, block in enumerate([*self.prenet, *self.blocks]):
            b = bias if bias is None or scales[i] is None else bias * scales[i]
            x = block(x, b)
        return x[:, c.num_extra_tokens :]


def funasr_names(c: E2VConfig) -> dict[str, str]:
    """FunASR's name -> this module's, for every weight the features use under settings ``c``."""
    enc = "modality_encoders.AUDIO."
    names: dict[str, str] = {}
    for i in range(len(c.conv_layers)):
        names[f"{enc}local_encoder.conv_layers.{i}.0.weight"] = f"convs.{i}.weight"
        if c.extractor_mode == "layer_norm":
            for p in ("weight", "bias"):
                names[f"{enc}local_encoder.conv_layers.{i}.2.1.{p}"] = f"conv_norms.{i}.{p}"
        elif i == 0:
            for p in ("weight", "bias"):
                names[f"{enc}local_encoder.conv_layers.0.2.{p}"] = f"conv_norms.0.{p}"
    for p in ("weight", "bias"):
        names[f"{enc}project_features.1.{p}"] = f"project_norm.{p}"
        names[f"{enc}project_features.2.{p}"] = f"project.{p}"
    pos = f"{enc}relative_positional_encoder."
    if c.conv_pos_pre_ln:
        for p in ("weight", "bias"):
            names[f"{pos}0.{p}"] = f"pos_pre_norm.{p}"
        pos += "1."
    for i in range(c.conv_pos_depth):
        for p in ("weight", "bias"):
            names[f"{pos}{i + 1}.0.{p}"] = f"pos_convs.{i}.{p}"
    if c.num_extra_tokens:
        names[f"{enc}extra_tokens"] = "extra_tokens"
    if c.use_alibi:
        names[f"{enc}alibi_scale"] = "alibi_scale"
    block_params = [
        "attn.qkv.weight",
        "attn.qkv.bias",
        "attn.proj.weight",
        "attn.proj.bias",
        "mlp.fc1.weight",
        "mlp.fc1.bias",
        "mlp.fc2.weight",
        "mlp.fc2.bias",
    ]
    norm_params = ["weight", "bias"] if c.norm_affine else []
    block_params += [f"{n}.{p}" for n in ("norm1", "norm2") for p in norm_params]
    for i in range(c.prenet_depth):
        for p in block_params:
            names[f"{enc}context_encoder.blocks.{i}.{p}"] = f"prenet.{i}.{p}"
    for p in norm_params:
        names[f"{enc}context_encoder.norm.{p}"] = f"prenet_norm.{p}"
    for i in range(c.depth):
        for p in block_params:
            names[f"blocks.{i}.{p}"] = f"blocks.{i}.{p}"
    return names


def from_funasr_keys(state: Mapping[str, torch.Tensor], c: E2VConfig) -> dict[str, torch.Tensor]:
    """FunASR's weight names -> this module's, for the weights the features use; raises
    :class:`EncoderError` naming weights the computation does not account for or lacks."""
    names = funasr_names(c)
    unknown = sorted(k for k in state if k not in names and not k.startswith(_IGNORED_PREFIXES))
    if unknown:
        raise EncoderError(
            f"{KIND}: {len(unknown)} weights the settings do not account for "
            f"(e.g. {unknown[0]}): config.yaml does not describe this model.pt"
        )
    missing = sorted(k for k in names if k not in state)
    if missing:
        raise EncoderError(f"{KIND}: model.pt lacks {len(missing)} weights the settings need (e.g. {missing[0]})")
    out = {ours: state[theirs] for theirs, ours in names.items()}
    if "alibi_scale" in out and out["alibi_scale"].dim() == 4:  # an older layout, as FunASR reads it
        out["alibi_scale"] = out["alibi_scale"][None]
    return out


def _files(source: str) -> tuple[Path, Path]:
    """(model.pt, config.yaml) of a folder, or of a model.pt and the config.yaml beside it."""
    path = Path(os.path.expanduser(source))
    weights = path / "model.pt" if path.is_dir() else path
    config = weights.parent / "config.yaml"
    for f in (weights, config):
        if not f.is_file():
            raise EncoderError(f"{KIND}: {f} not found (a FunASR emotion2vec folder holds model.pt and config.yaml)")
    return weights, config


def read_emotion2vec_checkpoint(source: str) -> tuple[E2VConfig, dict[str, torch.Tensor], str]:
    """(settings, weights under FunASR's names, digest) of a released checkpoint folder."""
    import yaml

    weights, config_file = _files(source)
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise EncoderError(f"{KIND}: {config_file} is not readable YAML: {' '.join(str(err).split())[:200]}") from None
    if not isinstance(config, dict) or config.get("model") != "Emotion2vec":
        raise EncoderError(
            f"{KIND}: {config_file} does not describe an Emotion2vec model "
            f"(model: {config.get('model') if isinstance(config, dict) else None!r})"
        )
    c = E2VConfig.from_model_conf(config.get("model_conf") or {})
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle refusals come in several types
        raise EncoderError(
            f"{KIND}: {weights} cannot be loaded safely (weights_only): {' '.join(str(err).split())[:200]}"
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):  # as FunASR unwraps it
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderError(f"{KIND}: {weights} holds no state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    h = hashlib.sha256()
    for f in (config_file, weights):
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return c, state, "sha256:" + h.hexdigest()


class Emotion2VecEncoder(AudioEncoder):
    """A released emotion2vec / emotion2vec+ checkpoint folder, last layer, 50 frames/s."""

    model_type = "emotion2vec"

    def __init__(self, source: str | os.PathLike, *, device=None, dtype=None):
        source = str(source)
        config, state, self.digest = read_emotion2vec_checkpoint(source)
        model = Emotion2Vec(config)
        try:
            model.load_state_dict(from_funasr_keys(state, config), strict=True)
        except RuntimeError as err:  # shapes that do not fit the settings
            raise EncoderError(
                f"{KIND}: model.pt does not fit config.yaml: {' '.join(str(err).split())[:300]}"
            ) from None
        self.device, self.dtype = placement(device, dtype)
        self.model = model.eval().to(device=self.device, dtype=self.dtype)
        self.config = config
        self.dim = config.embed_dim
        self.num_layers = config.prenet_depth + config.depth
        self.layer = self.num_layers
        self.frame_rate = SAMPLE_RATE / int(np.prod([s for _, _, s in config.conv_layers]))
        need = 1
        for _, k, s in reversed(config.conv_layers):
            need = (need - 1) * s + k
        self.min_samples = need
        self.name = f"{KIND}:{source}"
        self.spec = self.name

    def num_frames(self, num_samples: int) -> int:
        return self.model.num_frames(num_samples)

    @torch.inference_mode()
    def encode(self, wavs: Sequence[np.ndarray]) -> list[torch.Tensor]:
        out = []
        for w in self.checked(wavs):
            x = torch.from_numpy(w)[None].to(device=self.device, dtype=self.dtype)
            out.append(self.model(x)[0].float().cpu())
        return out


def load_emotion2vec(spec, *, device=None, dtype=None, tiny_root=None) -> Emotion2VecEncoder:
    """The loader behind ``e2v:<folder or model.pt>`` and ``e2v-plus-large``."""
    if spec.layer is not None or spec.revision is not None:
        raise EncoderError(f"{KIND}: takes no @layer or @revision (its features are FunASR's: the last layer)")
    source = spec.source
    if source == f"${PLUS_LARGE_ENV}":
        source = os.environ.get(PLUS_LARGE_ENV, "")
        if not source:
            raise EncoderError(
                f"e2v-plus-large needs the folder of emotion2vec_plus_large "
                f"(model.pt + config.yaml) in ${PLUS_LARGE_ENV} (or use "
                f"{KIND}:/path/to/folder)"
            )
    return Emotion2VecEncoder(source, device=device, dtype=dtype)


__all__ = [
    "E2VConfig",
    "Emotion2Vec",
    "Emotion2VecEncoder",
    "alibi_slopes",
    "from_funasr_keys",
    "funasr_names",
    "read_emotion2vec_checkpoint",
    "load_emotion2vec",
    "PLUS_LARGE_ENV",
]
