"""ONNX export of a trained model (``ksr export CHECKPOINT --onnx model.onnx``; docs/export.md).

The file computes ``logits = model(audio, text, audio_padding_mask, text_padding_mask)``:

- ``audio`` float32 (batch, Ta, Da), ``text`` float32 (batch, Tt, Dt), the cache's features;
- ``audio_padding_mask`` bool (batch, Ta), ``text_padding_mask`` bool (batch, Tt), True = padded;
- ``logits`` float32 (batch, classes);
- ``attributes`` float32 (batch, A), only for a model that learns attributes (``--task attributes``
  or ``both``): the predicted values, in the order of the metadata's ``ksr.attributes``. A model of
  task ``attributes`` still has its (untrained) ``logits`` output.

The batch axis is dynamic; Ta and Tt are the lengths of the cache the checkpoint was trained on
(460 and 20 for the paper's), fixed because key-sparse attention keeps ``int(S * keep_rate)``
keys of S and that count is a constant of the graph. An audio-only or text-only model takes only
its modality's two inputs. ``metadata_props`` holds the class names, the cache's record of its
encoders (names, weight digests, layers, frame rate, lengths, dtype), the model config and
where the checkpoint came from, JSON where structured (the keys: docs/export.md).

What is exported is the checkpoint's own model with its attention on the plain path
(``impl="plain"``): the public code's operations, which the fast paths are tested to match (the
chunked path runs an autograd Function over worker threads, the SDPA path a fused kernel; neither
traces into ONNX operators). Its positional tables are cut to the rows the fixed lengths read.

Exporter: torch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``). torch 2.13's
default, the dynamo exporter, also exports this model, but it needs the onnxscript and onnx-ir
packages and took 15.7 s for the tiny test model, against 0.4 s (both measured on the
development machine, torch 2.13.0, 2026-11-30); the TorchScript exporter needs nothing beyond
torch. ``onnx`` (to write the metadata) and ``onnxruntime`` (the check) are the ``ksr[export]``
extra, imported only here.
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ... import __version__
from ...cache import CacheMeta
from ...common import KsrError, atomic_write, check_replace
from ...common.optional import require
from ..model.attention import MultiheadAttention
from ..model.config import cache_dims
from ..model.layers import LayerStack
from ..model.normalise import inputs_note
from ..model.tasks import learns_attributes
from ..train.checkpoint import load_model_and_meta
from ..train.runs import recorded_cache_meta

OPSET = 17  # LayerNormalization is one operator from opset 17 on
FORMAT = "ksr-onnx/1"


class ExportError(KsrError, ValueError):
    """The export cannot go on as asked; the message is one line."""


@dataclass
class Exported:
    path: Path
    inputs: list[tuple[str, str, list]]  # (name, dtype, shape)
    classes: tuple[str, ...]
    nbytes: int  # the file's size
    max_abs_diff: float | None = None  # onnxruntime against torch on random padded inputs
    audio_normalisation: str | None = None  # what the caller must do to the audio features first


def input_spec(modalities: str, cache: CacheMeta) -> list[tuple[str, str, list]]:
    """The graph's inputs in the model's order (features, then masks): (name, dtype, shape)."""
    used = [
        (name, length, dim)
        for name, length, dim in (
            ("audio", cache.max_audio_len, cache.audio_dim),
            ("text", cache.max_text_len, cache.text_dim),
        )
        if modalities in ("both", name)
    ]
    return [(name, "float32", ["batch", length, dim]) for name, length, dim in used] + [
        (f"{name}_padding_mask", "bool", ["batch", length]) for name, length, _ in used
    ]


class ExportGraph(nn.Module):
    """The model with its inputs as the ONNX graph takes them (only the used modalities')."""

    def __init__(self, model: nn.Module, modalities: str) -> None:
        super().__init__()
        self.model = model
        self.modalities = modalities

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        output = self._output(*inputs)
        cfg = self.model.cfg
        if not learns_attributes(cfg):
            return output
        return output[..., : cfg.num_classes], output[..., cfg.num_classes :]  # the graph's two outputs

    def _output(self, *inputs: Tensor) -> Tensor:
        if self.modalities == "both":
            return self.model(*inputs)
        x, mask = inputs  # one modality: its features and its mask
        if self.modalities == "audio":
            return self.model(x, None, mask, None)
        return self.model(None, x, None, mask)


def exportable(model: nn.Module, rows: int) -> nn.Module:
    """A copy of the model on the plain attention path, its positional tables cut to ``rows``."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, MultiheadAttention):
            module.impl = "plain"
        if isinstance(module, LayerStack):
            for name in ("query_position", "key_position"):
                table = getattr(module, name)
                if table is not None:
                    if table.shape[0] < rows:
                        raise ExportError(
                            f"the model's positional tables hold {table.shape[0]} rows, fewer than {rows}"
                        )
                    setattr(module, name, nn.Parameter(table[:rows].clone(), requires_grad=False))
    return model


def random_inputs(spec: list[tuple[str, str, list]], batch: int, seed: int = 0) -> list[Tensor]:
    """Random features with varied true lengths (the first item unpadded), padding zeroed."""
    g = torch.Generator().manual_seed(seed)
    values: dict[str, Tensor] = {}
    for name, _, shape in spec:
        if name.endswith("_padding_mask"):
            length = shape[1]
            true = torch.randint(1, length + 1, (batch,), generator=g)
            true[0] = length
            mask = torch.arange(length)[None, :] >= true[:, None]
            features = name.removesuffix("_padding_mask")
            values[features] = values[features].masked_fill(mask[..., None], 0.0)
            values[name] = mask
        else:
            values[name] = torch.randn(batch, *shape[1:], generator=g)
    return [values[name] for name, _, _ in spec]


def export_onnx(
    checkpoint: str | os.PathLike, out: str | os.PathLike, force: bool = False, check: bool = True
) -> Exported:
    """Write the checkpoint's model as ONNX to ``out`` (atomically); with ``check``, run the file
    in onnxruntime on random padded inputs and report the largest logit difference to torch."""
    require("onnx", "ksr export", "export")
    if check:
        require("onnxruntime", "ksr export (its check; or pass --no-check)", "export")
    path, out = Path(checkpoint), Path(out)
    check_replace(out, force, {"checkpoint": path})
    if not out.parent.is_dir():
        raise ExportError(f"{out.parent}: no such folder")
    model, meta = load_model_and_meta(path)
    cache = recorded_cache_meta(path, meta)
    source = {"file": path.name, **{k: v for k, v in meta.items() if k != "cache_meta"}}
    result = write_onnx(model, cache, out, source)
    if check:
        result.max_abs_diff = compare_with_torch(out, model, result.inputs)
    return result


def speaker_normalised(model: nn.Module) -> bool:
    """Whether the model expects its audio standardised per speaker (or session) by its caller."""
    return getattr(model.cfg, "speaker_norm", "none") != "none"


def write_onnx(model: nn.Module, cache: CacheMeta, out: Path, source: dict[str, Any]) -> Exported:
    """The export itself: ``model`` (trained on a cache with metadata ``cache``) into ``out``,
    ``source`` (where the model came from) among the metadata."""
    onnx = require("onnx", "ksr export", "export")
    differs = [
        f"{k} {getattr(model.cfg, k)} != {v}" for k, v in cache_dims(cache).items() if getattr(model.cfg, k) != v
    ]
    if differs:
        raise ExportError(
            f"{source.get('file')}: the model does not fit its recorded cache metadata ({', '.join(differs)})"
        )
    spec = input_spec(model.cfg.modalities, cache)
    names = [name for name, _, _ in spec]
    graph = ExportGraph(exportable(model, max(cache.max_audio_len, cache.max_text_len)), model.cfg.modalities)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer's notes on Python-side shape checks (lengths are fixed) and the exporter's
        # deprecation notice are not the user's business.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            tuple(random_inputs(spec, batch=2)),
            buffer,
            input_names=names,
            output_names=output_names(model.cfg),
            dynamic_axes={name: {0: "batch"} for name in [*names, *output_names(model.cfg)]},
            opset_version=OPSET,
            dynamo=False,
        )
    props = onnx.ModelProto()
    onnx.helper.set_model_props(
        props,
        {
            "ksr.format": FORMAT,
            "ksr.classes": json.dumps(list(cache.classes)),
            "ksr.attributes": json.dumps(list(model.cfg.attributes) if learns_attributes(model.cfg) else []),
            "ksr.inputs": json.dumps(spec),
            "ksr.padding_mask": "True = padded position (ignored by masked attention); False = a true frame or token",
            "ksr.cache_meta": json.dumps(cache.to_dict(), sort_keys=True),
            "ksr.model_config": json.dumps(model.cfg.to_dict(), sort_keys=True),
            "ksr.checkpoint": json.dumps(source),
            "ksr.version": __version__,
            **({"ksr.audio_normalisation": inputs_note(model.cfg.speaker_norm)} if speaker_normalised(model) else {}),
        },
    )
    props.doc_string = f"ksr {model.cfg.architecture} ({model.cfg.modalities}): logits over {list(cache.classes)}"
    # Two serialised protobuf messages written one after the other parse as their merge (repeated
    # fields appended, the last singular value kept): the metadata joins the exporter's file
    # without parsing and re-serialising its hundreds of MB of weights.
    data = [buffer.getvalue(), props.SerializeToString()]
    atomic_write(out, "wb", lambda f: [f.write(part) for part in data])
    note = inputs_note(model.cfg.speaker_norm) if speaker_normalised(model) else None
    return Exported(out, spec, cache.classes, nbytes=sum(len(part) for part in data), audio_normalisation=note)


def output_names(cfg) -> list[str]:
    """The graph's outputs: ``logits``, and ``attributes`` for a model that learns them."""
    return ["logits", "attributes"] if learns_attributes(cfg) else ["logits"]


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """An exported file's ksr metadata, JSON values decoded (onnxruntime reads the same props)."""
    onnx = require("onnx", "reading an exported model", "export")
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return {
        k: (v if k in ("ksr.format", "ksr.version", "ksr.padding_mask") else json.loads(v)) for k, v in props.items()
    }


def compare_with_torch(path: Path, model: nn.Module, spec: list, batch: int = 3, seed: int = 1) -> float:
    """Largest |logit difference| between onnxruntime on the file and the torch model, on random
    features with varied true lengths."""
    ort = require("onnxruntime", "ksr export's check", "export")
    inputs = random_inputs(spec, batch, seed)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: x.numpy() for (name, _, _), x in zip(spec, inputs, strict=True)}
    got = np.concatenate(session.run(output_names(model.cfg), feed), axis=-1)
    with torch.no_grad():
        want = ExportGraph(model, model.cfg.modalities)._output(*inputs).numpy()
    return float(np.abs(got - want).max())
